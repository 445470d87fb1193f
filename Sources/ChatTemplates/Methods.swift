import Foundation

/// Python `str` algorithms on Unicode scalars (Python strings are sequences of code points).
enum Strings {
    typealias S = [Unicode.Scalar]

    static func find(_ h: S, _ n: S, from: Int, to: Int? = nil) -> Int? {
        let end = min(to ?? h.count, h.count)
        if n.isEmpty { return from <= end ? from : nil }
        guard end - n.count >= from else { return nil }
        var i = from
        while i <= end - n.count {
            if h[i] == n[0] {
                var k = 1
                while k < n.count && h[i + k] == n[k] { k += 1 }
                if k == n.count { return i }
            }
            i += 1
        }
        return nil
    }

    static func rfind(_ h: S, _ n: S, from: Int = 0, to: Int? = nil) -> Int? {
        let end = min(to ?? h.count, h.count)
        var i = end - n.count
        while i >= from {
            if Array(h[i..<(i + n.count)]) == n { return i }
            i -= 1
        }
        return nil
    }

    static func count(_ h: S, _ n: S) -> Int {
        if n.isEmpty { return h.count + 1 }
        var c = 0
        var i = 0
        while let j = find(h, n, from: i) {
            c += 1
            i = j + n.count
        }
        return c
    }

    static func replace(_ h: S, _ old: S, _ new: S, count limit: Int = -1) -> S {
        var out: S = []
        var done = 0
        if old.isEmpty {
            for (i, c) in h.enumerated() {
                if limit < 0 || done < limit { out += new; done += 1 }
                out.append(c)
                _ = i
            }
            if limit < 0 || done < limit { out += new }
            return out
        }
        var i = 0
        while limit < 0 || done < limit, let j = find(h, old, from: i) {
            out += h[i..<j]
            out += new
            i = j + old.count
            done += 1
        }
        out += h[i...]
        return out
    }

    static func split(_ h: S, _ sep: S?, maxsplit: Int) -> [S] {
        guard let sep else {
            var parts: [S] = []
            var i = 0
            while i < h.count {
                while i < h.count, PyFormat.isSpace(h[i]) { i += 1 }
                if i >= h.count { break }
                if maxsplit >= 0 && parts.count == maxsplit {
                    var end = h.count
                    while end > i, PyFormat.isSpace(h[end - 1]) { end -= 1 }
                    parts.append(Array(h[i..<end]))
                    break
                }
                let s = i
                while i < h.count, !PyFormat.isSpace(h[i]) { i += 1 }
                parts.append(Array(h[s..<i]))
            }
            return parts
        }
        var parts: [S] = []
        var i = 0
        while maxsplit < 0 || parts.count < maxsplit, let j = find(h, sep, from: i) {
            parts.append(Array(h[i..<j]))
            i = j + sep.count
        }
        parts.append(Array(h[i...]))
        return parts
    }

    static func rsplit(_ h: S, _ sep: S?, maxsplit: Int) -> [S] {
        if maxsplit < 0 { return split(h, sep, maxsplit: -1) }
        let rev = split(Array(h.reversed()), sep.map { Array($0.reversed()) }, maxsplit: maxsplit)
        return rev.reversed().map { Array($0.reversed()) }
    }

    static let lineBreaks: Set<UInt32> = [0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029]

    /// `str.splitlines(keepends)`.
    static func splitlines(_ h: S, keepends: Bool = false) -> [S] {
        var out: [S] = []
        var i = 0
        var start = 0
        while i < h.count {
            if lineBreaks.contains(h[i].value) {
                var end = i + 1
                if h[i] == "\r", i + 1 < h.count, h[i + 1] == "\n" { end = i + 2 }
                out.append(Array(h[start..<(keepends ? end : i)]))
                start = end
                i = end
            } else {
                i += 1
            }
        }
        if start < h.count { out.append(Array(h[start...])) }
        return out
    }

    static func upper(_ s: String) -> String {
        PyFormat.fromScalars(s.unicodeScalars.flatMap { $0.properties.uppercaseMapping.unicodeScalars })
    }

    static func lower(_ s: String) -> String {
        PyFormat.fromScalars(s.unicodeScalars.flatMap { $0.properties.lowercaseMapping.unicodeScalars })
    }

    static func isCased(_ c: Unicode.Scalar) -> Bool {
        c.properties.isUppercase || c.properties.isLowercase || c.properties.generalCategory == .titlecaseLetter
    }

    /// `str.title()`: a letter after a cased letter is lowered, any other letter title-cased.
    static func title(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        var prevCased = false
        for c in s.unicodeScalars {
            if prevCased {
                out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
            } else {
                out.append(contentsOf: c.properties.titlecaseMapping.unicodeScalars)
            }
            prevCased = isCased(c)
        }
        return String(out)
    }

    /// `str.capitalize()`.
    static func capitalize(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        for (i, c) in s.unicodeScalars.enumerated() {
            out.append(contentsOf: (i == 0 ? c.properties.titlecaseMapping : c.properties.lowercaseMapping).unicodeScalars)
        }
        return String(out)
    }

    static func swapcase(_ s: String) -> String {
        var out = String.UnicodeScalarView()
        for c in s.unicodeScalars {
            if c.properties.isUppercase { out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars) }
            else if c.properties.isLowercase { out.append(contentsOf: c.properties.uppercaseMapping.unicodeScalars) }
            else { out.append(c) }
        }
        return String(out)
    }

    /// `str.islower()` / `str.isupper()`: at least one cased character and none of the other case.
    static func isLower(_ s: String) -> Bool {
        var cased = false
        for c in s.unicodeScalars {
            if c.properties.isUppercase || c.properties.generalCategory == .titlecaseLetter { return false }
            if c.properties.isLowercase { cased = true }
        }
        return cased
    }

    static func isUpper(_ s: String) -> Bool {
        var cased = false
        for c in s.unicodeScalars {
            if c.properties.isLowercase || c.properties.generalCategory == .titlecaseLetter { return false }
            if c.properties.isUppercase { cased = true }
        }
        return cased
    }

    /// `str.center(width, fill)` with CPython's placement of the odd padding character.
    static func pad(_ s: String, width: Int, fill: Unicode.Scalar, align: Character) -> String {
        let n = s.unicodeScalars.count
        guard width > n else { return s }
        let marg = width - n
        let left: Int
        switch align {
        case "<": left = 0
        case ">": left = marg
        default: left = marg / 2 + (marg & width & 1)
        }
        let l = String(repeating: String(fill), count: left)
        let r = String(repeating: String(fill), count: marg - left)
        return l + s + r
    }
}

/// Methods templates call on values (`'x'.strip()`, `d.items()`, `loop.cycle(…)`), as the sandbox
/// allows them: methods that would mutate a list or dict are refused (ImmutableSandboxedEnvironment).
enum Methods {
    static let stringMethods: Set<String> = [
        "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "upper", "lower",
        "title", "capitalize", "swapcase", "casefold", "replace", "find", "rfind", "index", "rindex", "count", "join",
        "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric", "isdecimal", "istitle",
        "center", "ljust", "rjust", "zfill", "removeprefix", "removesuffix", "format", "partition", "rpartition",
    ]
    static let dictMethods: Set<String> = ["items", "keys", "values", "get", "copy"]
    static let dictMutators: Set<String> = ["clear", "pop", "popitem", "setdefault", "update"]
    static let listMethods: Set<String> = ["index", "count", "copy"]
    static let listMutators: Set<String> = ["append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"]

    /// The attribute `name` of `v` when it is a method, else nil.
    static func attribute(_ v: Value, _ name: String) -> Value? {
        let allowed: Bool
        switch v {
        case .string: allowed = stringMethods.contains(name)
        case .dict:
            if dictMutators.contains(name) { return .undefined(UndefinedInfo(reason: .unsafe(objType: "dict", name))) }
            allowed = dictMethods.contains(name)
        case .list:
            if listMutators.contains(name) { return .undefined(UndefinedInfo(reason: .unsafe(objType: "list", name))) }
            allowed = listMethods.contains(name)
        case .tuple: allowed = name == "index" || name == "count"
        default: allowed = false
        }
        return allowed ? .callable(CallableBox(.method(receiver: v, name: name))) : nil
    }

    static func call(_ recv: Value, _ name: String, _ args: [Value], _ kwargs: [(String, Value)],
                     _ interp: Interpreter) throws -> Value
    {
        let a = Args(args, kwargs, "\(recv.typeName).\(name)")
        switch recv {
        case .string(let s): return try stringMethod(s, name, a, interp)
        case .dict(let d):
            switch name {
            case "items":
                try a.none()
                try interp.step(d.count)
                return .list(d.items.map { .tuple([$0.0, $0.1]) })
            case "keys": try a.none(); return .list(d.keys)
            case "values": try a.none(); return .list(d.values)
            case "copy": try a.none(); return recv
            case "get":
                let key = try a.required(0, "key")
                return try d.get(key) ?? a.optional(1, "default") ?? .none
            default: break
            }
        case .list(let xs), .tuple(let xs):
            switch name {
            case "copy": return recv
            case "count":
                let x = try a.required(0, "value")
                return .int(xs.filter { Value.pyEqual($0, x) }.count)
            case "index":
                let x = try a.required(0, "value")
                guard let i = xs.firstIndex(where: { Value.pyEqual($0, x) }) else {
                    throw RenderError.value("\(ChatTemplateError.snippet(x.repr())) is not in list")
                }
                return .int(i)
            default: break
            }
        case .loop(let box):
            switch name {
            case "cycle":
                guard !args.isEmpty else { throw RenderError.type("no items for cycling given") }
                return args[box.index0 % args.count]
            case "changed":
                if let last = box.lastChanged, last.count == args.count, zip(last, args).allSatisfy({ Value.pyEqual($0, $1) }) {
                    return .bool(false)
                }
                box.lastChanged = args
                return .bool(true)
            default: break
            }
        default: break
        }
        throw RenderError.type("'\(recv.typeName)' object has no method '\(ChatTemplateError.snippet(name))'")
    }

    private static func scalars(_ v: Value, _ what: String) throws -> [Unicode.Scalar] {
        guard case .string(let s) = v else {
            throw RenderError.type("\(what) must be str, not \(v.typeName)")
        }
        return Array(s.unicodeScalars)
    }

    private static func optionalChars(_ v: Value?) throws -> String? {
        guard let v else { return nil }
        switch v {
        case .none: return nil
        case .string(let s): return s
        default: throw RenderError.type("strip arg must be None or str")
        }
    }

    private static func stringMethod(_ s: String, _ name: String, _ a: Args, _ interp: Interpreter) throws -> Value {
        let h = Array(s.unicodeScalars)
        func str(_ x: [Unicode.Scalar]) -> Value { .string(PyFormat.fromScalars(x)) }
        func range(_ startIdx: Int, _ endIdx: Int) throws -> (Int, Int) {
            func norm(_ v: Value?, _ d: Int) throws -> Int {
                guard let v else { return d }
                if case .none = v { return d }
                guard let i = v.intValue else { throw RenderError.type("slice indices must be integers or None") }
                return i < 0 ? max(0, i + h.count) : min(i, h.count)
            }
            return (try norm(a.optional(startIdx, "start"), 0), try norm(a.optional(endIdx, "end"), h.count))
        }
        switch name {
        case "strip", "lstrip", "rstrip":
            let chars = try optionalChars(a.optional(0, "chars"))
            return .string(PyFormat.strip(s, chars: chars, left: name != "rstrip", right: name != "lstrip"))
        case "split", "rsplit":
            var sep: [Unicode.Scalar]? = nil
            if let v = a.optional(0, "sep"), !isNone(v) {
                sep = try scalars(v, "sep")
                if sep!.isEmpty { throw RenderError.value("empty separator") }
            }
            let maxsplit = try a.optional(1, "maxsplit").map { try intArg($0, "maxsplit") } ?? -1
            let parts = name == "split" ? Strings.split(h, sep, maxsplit: maxsplit) : Strings.rsplit(h, sep, maxsplit: maxsplit)
            try interp.step(parts.count)
            return .list(parts.map(str))
        case "splitlines":
            let keep = a.optional(0, "keepends")?.truthy ?? false
            return .list(Strings.splitlines(h, keepends: keep).map(str))
        case "startswith", "endswith":
            let (lo, hi) = try range(1, 2)
            let prefixArg = try a.required(0, "prefix")
            let candidates: [Value]
            if case .tuple(let xs) = prefixArg { candidates = xs } else { candidates = [prefixArg] }
            for c in candidates {
                guard case .string(let p) = c else {
                    throw RenderError.type("\(name) first arg must be str or a tuple of str, not \(c.typeName)")
                }
                let n = Array(p.unicodeScalars)
                guard hi - lo >= n.count else { continue }
                let seg = name == "startswith" ? h[lo..<(lo + n.count)] : h[(hi - n.count)..<hi]
                if Array(seg) == n { return .bool(true) }
            }
            return .bool(false)
        case "upper": return .string(Strings.upper(s))
        case "lower", "casefold": return .string(Strings.lower(s))
        case "title": return .string(Strings.title(s))
        case "capitalize": return .string(Strings.capitalize(s))
        case "swapcase": return .string(Strings.swapcase(s))
        case "replace":
            let old = try scalars(try a.required(0, "old"), "replace() argument 1")
            let new = try scalars(try a.required(1, "new"), "replace() argument 2")
            let count = try a.optional(2, "count").map { try intArg($0, "count") } ?? -1
            let r = Strings.replace(h, old, new, count: count)
            try interp.checkSize(bytes: r.count * 4)
            return str(r)
        case "find", "rfind", "index", "rindex":
            let n = try scalars(try a.required(0, "sub"), "must be str")
            let (lo, hi) = try range(1, 2)
            let r = (name == "find" || name == "index") ? Strings.find(h, n, from: lo, to: hi)
                : Strings.rfind(h, n, from: lo, to: hi)
            if let r { return .int(r) }
            if name == "find" || name == "rfind" { return .int(-1) }
            throw RenderError.value("substring not found")
        case "count":
            return .int(Strings.count(h, try scalars(try a.required(0, "sub"), "must be str")))
        case "join":
            let items = try interp.iterate(try a.required(0, "iterable"))
            var parts: [String] = []
            var total = 0
            for (i, x) in items.enumerated() {
                guard case .string(let p) = x else {
                    throw RenderError.type("sequence item \(i): expected str instance, \(x.typeName) found")
                }
                total += p.utf8.count + s.utf8.count
                try interp.checkSize(bytes: total)
                parts.append(p)
            }
            return .string(parts.joined(separator: s))
        case "isdigit", "isdecimal", "isnumeric":
            return .bool(!h.isEmpty && h.allSatisfy { $0.properties.numericType != nil && (name == "isnumeric" || $0.properties.numericType == .decimal || (name == "isdigit" && $0.properties.numericType == .digit)) })
        case "isalpha": return .bool(!h.isEmpty && h.allSatisfy { $0.properties.isAlphabetic })
        case "isalnum": return .bool(!h.isEmpty && h.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
        case "isspace": return .bool(!h.isEmpty && h.allSatisfy(PyFormat.isSpace))
        case "islower": return .bool(Strings.isLower(s))
        case "isupper": return .bool(Strings.isUpper(s))
        case "istitle": return .bool(!s.isEmpty && Strings.title(s) == s && h.contains(where: Strings.isCased))
        case "center", "ljust", "rjust":
            let width = try intArg(try a.required(0, "width"), "width")
            try interp.checkSize(bytes: width)
            var fill: Unicode.Scalar = " "
            if let f = a.optional(1, "fillchar") {
                let fs = try scalars(f, "fill character")
                guard fs.count == 1 else { throw RenderError.type("The fill character must be exactly one character long") }
                fill = fs[0]
            }
            return .string(Strings.pad(s, width: width, fill: fill, align: name == "center" ? "^" : name == "ljust" ? "<" : ">"))
        case "zfill":
            let width = try intArg(try a.required(0, "width"), "width")
            try interp.checkSize(bytes: width)
            guard width > h.count else { return .string(s) }
            var body = h
            var sign: [Unicode.Scalar] = []
            if let f = body.first, f == "+" || f == "-" { sign = [f]; body.removeFirst() }
            return str(sign + Array(repeating: "0", count: width - h.count) + body)
        case "removeprefix", "removesuffix":
            let n = try scalars(try a.required(0, "affix"), "argument")
            if name == "removeprefix", h.starts(with: n) { return str(Array(h.dropFirst(n.count))) }
            if name == "removesuffix", !n.isEmpty, h.count >= n.count, Array(h.suffix(n.count)) == n {
                return str(Array(h.dropLast(n.count)))
            }
            return .string(s)
        case "partition", "rpartition":
            let n = try scalars(try a.required(0, "sep"), "sep")
            if n.isEmpty { throw RenderError.value("empty separator") }
            let idx = name == "partition" ? Strings.find(h, n, from: 0) : Strings.rfind(h, n)
            guard let i = idx else {
                return name == "partition" ? .tuple([.string(s), .string(""), .string("")])
                    : .tuple([.string(""), .string(""), .string(s)])
            }
            return .tuple([str(Array(h[..<i])), str(n), str(Array(h[(i + n.count)...]))])
        case "format":
            return .string(try format(h, a.args, a.kwargs, interp))
        default:
            throw RenderError.type("'str' object has no method '\(name)'")
        }
    }

    private static func isNone(_ v: Value) -> Bool { if case .none = v { return true } else { return false } }

    static func intArg(_ v: Value, _ what: String) throws -> Int {
        guard let i = v.intValue else {
            throw RenderError.type("'\(v.typeName)' object cannot be interpreted as an integer")
        }
        return i
    }

    /// `str.format(*args, **kwargs)` with `{}`, `{0}`, `{name}`, `{name.attr}`/`{0[key]}` and `!r`/`!s`;
    /// a format spec after `:` is refused.
    static func format(_ h: [Unicode.Scalar], _ args: [Value], _ kwargs: [(String, Value)], _ interp: Interpreter) throws -> String {
        var out = ""
        var i = 0
        var auto = 0
        while i < h.count {
            let c = h[i]
            if c == "{" {
                if i + 1 < h.count, h[i + 1] == "{" { out += "{"; i += 2; continue }
                guard let close = h[(i + 1)...].firstIndex(of: "}") else {
                    throw RenderError.value("Single '{' encountered in format string")
                }
                var field = PyFormat.fromScalars(h[(i + 1)..<close])
                var conversion: Character? = nil
                if let bang = field.firstIndex(of: "!") {
                    conversion = field[field.index(after: bang)...].first
                    field = String(field[..<bang])
                }
                if field.contains(":") {
                    throw RenderError.value("format specs ('{:…}') are not supported by Kvant's template engine")
                }
                var head = field
                var rest = ""
                if let dot = field.firstIndex(where: { $0 == "." || $0 == "[" }) {
                    head = String(field[..<dot])
                    rest = String(field[dot...])
                }
                var v: Value
                if head.isEmpty {
                    guard auto < args.count else { throw RenderError.value("Replacement index \(auto) out of range for positional args tuple") }
                    v = args[auto]
                    auto += 1
                } else if let n = Int(head) {
                    guard n < args.count else { throw RenderError.value("Replacement index \(n) out of range for positional args tuple") }
                    v = args[n]
                } else {
                    guard let kv = kwargs.last(where: { $0.0 == head }) else { throw RenderError.value("KeyError: '\(ChatTemplateError.snippet(head))'") }
                    v = kv.1
                }
                var r = Substring(rest)
                while let f = r.first {
                    if f == "." {
                        r = r.dropFirst()
                        let name = r.prefix { $0 != "." && $0 != "[" }
                        r = r.dropFirst(name.count)
                        v = try interp.getattr(v, String(name))
                    } else if f == "[" {
                        guard let end = r.firstIndex(of: "]") else { throw RenderError.value("Missing ']' in format string") }
                        let key = String(r[r.index(after: r.startIndex)..<end])
                        r = r[r.index(after: end)...]
                        v = try interp.getitem(v, Int(key).map { .int($0) } ?? .string(key))
                    } else {
                        break
                    }
                }
                out += conversion == "r" ? v.repr() : v.str()
                try interp.checkSize(bytes: out.utf8.count)
                i = close + 1
            } else if c == "}" {
                if i + 1 < h.count, h[i + 1] == "}" { out += "}"; i += 2; continue }
                throw RenderError.value("Single '}' encountered in format string")
            } else {
                out.unicodeScalars.append(c)
                i += 1
            }
        }
        return out
    }
}

/// Positional and keyword arguments of a builtin, with Python-style binding errors.
struct Args {
    let args: [Value]
    let kwargs: [(String, Value)]
    let fn: String

    init(_ args: [Value], _ kwargs: [(String, Value)], _ fn: String) {
        self.args = args
        self.kwargs = kwargs
        self.fn = fn
    }

    func optional(_ i: Int, _ name: String) -> Value? {
        if let kv = kwargs.last(where: { $0.0 == name }) { return kv.1 }
        return i < args.count ? args[i] : nil
    }

    func required(_ i: Int, _ name: String) throws -> Value {
        guard let v = optional(i, name) else {
            throw RenderError.type("\(fn)() missing required argument '\(name)' (pos \(i + 1))")
        }
        return v
    }

    func none() throws {
        if !args.isEmpty || !kwargs.isEmpty { throw RenderError.type("\(fn)() takes no arguments") }
    }
}
