import Foundation

/// The global functions of transformers' environment: jinja2's `range` (sandboxed: at most 100 000
/// items), `dict`, `namespace`, plus `raise_exception` and `strftime_now`.
enum Builtins {
    static let globals: Set<String> = ["range", "dict", "namespace", "raise_exception", "strftime_now"]
    static let maxRange = 100_000

    static func call(_ name: String, _ args: [Value], _ kwargs: [(String, Value)], _ interp: Interpreter) throws -> Value {
        switch name {
        case "range":
            guard !args.isEmpty, args.count <= 3, kwargs.isEmpty else {
                throw RenderError.type("range expected 1 to 3 integer arguments, got \(args.count)")
            }
            let ints = try args.map { a -> Int in
                if case .undefined(let u) = a { throw RenderError.undefined(u) }
                guard let i = a.intValue else {
                    throw RenderError.type("'\(a.typeName)' object cannot be interpreted as an integer")
                }
                return i
            }
            let (start, stop, step) = ints.count == 1 ? (0, ints[0], 1) : (ints[0], ints[1], ints.count == 3 ? ints[2] : 1)
            guard step != 0 else { throw RenderError.value("range() arg 3 must not be zero") }
            let n: Int
            if step > 0 { n = stop > start ? (stop - start - 1) / step + 1 : 0 } else {
                n = start > stop ? (start - stop - 1) / (-step) + 1 : 0
            }
            guard n <= maxRange else {
                throw RenderError.value("Range too big. The sandbox blocks ranges larger than MAX_RANGE (\(maxRange)).")
            }
            try interp.step(n / 16)
            return .list((0..<n).map { .int(start + $0 * step) })
        case "dict", "namespace":
            var d = PyDict()
            if args.count > 1 { throw RenderError.type("\(name) expected at most 1 positional argument, got \(args.count)") }
            if let first = args.first {
                switch first {
                case .dict(let src): for (k, v) in src.items { try d.set(k, v) }
                default:
                    for item in try interp.iterate(first) {
                        let pair = try interp.iterate(item)
                        guard pair.count == 2 else {
                            throw RenderError.value("dictionary update sequence element has length \(pair.count); 2 is required")
                        }
                        try d.set(pair[0], pair[1])
                    }
                }
            }
            for (k, v) in kwargs { try d.set(.string(k), v) }
            if name == "dict" { return .dict(d) }
            let ns = NamespaceBox()
            ns.dict = d
            return .namespace(ns)
        case "raise_exception":
            let msg = args.first ?? kwargs.first(where: { $0.0 == "message" })?.1 ?? .string("")
            throw RenderError.raised(msg.str())
        case "strftime_now":
            guard let f = args.first ?? kwargs.first(where: { $0.0 == "format" })?.1 else {
                throw RenderError.type("strftime_now() missing 1 required positional argument: 'format'")
            }
            guard case .string(let fmt) = f else {
                throw RenderError.type("strftime() argument 1 must be str, not \(f.typeName)")
            }
            return .string(PyFormat.strftime(fmt, date: interp.now, timeZone: interp.timeZone))
        default:
            throw RenderError.type("'\(name)' is not callable")
        }
    }
}

/// jinja2's tests (jinja2/tests.py).
enum Tests {
    static let known: Set<String> = [
        "defined", "undefined", "none", "boolean", "false", "true", "integer", "float", "number", "string", "mapping",
        "iterable", "sequence", "callable", "sameas", "escaped", "in", "lower", "upper", "even", "odd", "divisibleby",
        "eq", "equalto", "==", "ne", "!=", "lt", "lessthan", "<", "le", "<=", "gt", "greaterthan", ">", "ge", ">=",
        "filter", "test",
    ]
}

extension Interpreter {
    func applyTest(_ name: String, _ v: Value, _ args: [Value], _ kwargs: [(String, Value)]) throws -> Bool {
        let a = Args(args, kwargs, name)
        func arg() throws -> Value { try a.required(0, "other") }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true } else { return false }
        case "boolean": if case .bool = v { return true } else { return false }
        case "true": if case .bool(true) = v { return true } else { return false }
        case "false": if case .bool(false) = v { return true } else { return false }
        case "integer": if case .int = v { return true } else { return false }
        case "float": if case .double = v { return true } else { return false }
        case "number": return v.isNumber
        case "string": if case .string = v { return true } else { return false }
        case "mapping": if case .dict = v { return true } else { return false }
        case "iterable":
            switch v {
            case .list, .tuple, .string, .dict, .undefined: return true
            default: return false
            }
        case "sequence":
            switch v {
            case .list, .tuple, .string, .dict, .undefined: return true
            default: return false
            }
        case "callable":
            switch v {
            case .callable, .loop: return true
            default: return false
            }
        case "sameas":
            let o = try arg()
            switch (v, o) {
            case (.none, .none): return true
            case (.bool(let x), .bool(let y)): return x == y
            case (.int(let x), .int(let y)): return x == y && x >= -5 && x <= 256
            case (.namespace(let x), .namespace(let y)): return x === y
            default: return false
            }
        case "escaped": return false
        case "in": return try Ops.contains(try a.required(0, "seq"), v)
        case "lower": return Strings.isLower(v.str())
        case "upper": return Strings.isUpper(v.str())
        case "even", "odd":
            let r = try Ops.binary("%", v, .int(2), self)
            return Value.pyEqual(r, .int(0)) == (name == "even")
        case "divisibleby":
            return Value.pyEqual(try Ops.binary("%", v, try a.required(0, "num"), self), .int(0))
        case "eq", "equalto", "==": return Value.pyEqual(v, try arg())
        case "ne", "!=": return !Value.pyEqual(v, try arg())
        case "lt", "lessthan", "<": return try Ops.compare("<", v, try arg())
        case "le", "<=": return try Ops.compare("<=", v, try arg())
        case "gt", "greaterthan", ">": return try Ops.compare(">", v, try arg())
        case "ge", ">=": return try Ops.compare(">=", v, try arg())
        case "filter": if case .string(let s) = v { return Filters.known.contains(s) } else { return false }
        case "test": if case .string(let s) = v { return Tests.known.contains(s) } else { return false }
        default: throw RenderError.runtime("No test named '\(ChatTemplateError.snippet(name))'.")
        }
    }
}

/// jinja2's filters (jinja2/filters.py) as chat templates use them, with transformers' `tojson`.
enum Filters {
    static let known: Set<String> = [
        "abs", "attr", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "first",
        "float", "indent", "int", "items", "join", "last", "length", "list", "lower", "map", "max", "min", "reject",
        "rejectattr", "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum", "title",
        "tojson", "trim", "unique", "upper", "wordcount",
    ]
}

extension Interpreter {
    /// jinja2's `make_attrgetter`: "a.b.0" walks items (then attributes); `lowerStrings` is `ignore_case`.
    func attrGetter(_ attribute: Value?, default dflt: Value? = nil, lowerStrings: Bool = false) -> (Value) throws -> Value {
        let parts: [Value]
        switch attribute {
        case nil, .none?: parts = []
        case .string(let s)?: parts = s.split(separator: ".", omittingEmptySubsequences: false).map { p in
            Int(p).map { .int($0) } ?? .string(String(p))
        }
        case let other?: parts = [other]
        }
        return { item in
            var x = item
            for p in parts {
                x = try self.getitem(x, p)
                if let dflt, x.isUndefined { x = dflt }
            }
            if lowerStrings, case .string(let s) = x { return .string(Strings.lower(s)) }
            return x
        }
    }

    /// Stable merge sort with a throwing "less than".
    func stableSort(_ xs: [Value], _ less: (Value, Value) throws -> Bool) throws -> [Value] {
        try step(xs.count)
        if xs.count < 2 { return xs }
        let mid = xs.count / 2
        let a = try stableSort(Array(xs[..<mid]), less)
        let b = try stableSort(Array(xs[mid...]), less)
        var out: [Value] = []
        out.reserveCapacity(xs.count)
        var i = 0, j = 0
        while i < a.count && j < b.count {
            if try less(b[j], a[i]) { out.append(b[j]); j += 1 } else { out.append(a[i]); i += 1 }
        }
        out += a[i...]
        out += b[j...]
        return out
    }

    private func lessThan(_ x: Value, _ y: Value) throws -> Bool { (try Value.pyCompare(x, y, op: "<") ?? 0) < 0 }

    func applyFilter(_ name: String, _ v: Value, _ args: [Value], _ kwargs: [(String, Value)]) throws -> Value {
        let a = Args(args, kwargs, name)
        switch name {
        case "abs":
            switch v {
            case .int(let i):
                guard i != Int.min else { throw RenderError.value("integer overflow") }
                return .int(abs(i))
            case .bool(let b): return .int(b ? 1 : 0)
            case .double(let d): return .double(abs(d))
            default: throw RenderError.type("bad operand type for abs(): '\(v.typeName)'")
            }
        case "attr":
            guard case .string(let n) = try a.required(0, "name") else { return .undefined(UndefinedInfo(reason: .hint("attribute name must be a string"))) }
            return try getattr(v, n)
        case "batch":
            let n = try Methods.intArg(try a.required(0, "linecount"), "linecount")
            let fill = a.optional(1, "fill_with")
            var out: [Value] = []
            var tmp: [Value] = []
            for item in try iterate(v) {
                try step()
                if tmp.count == n { out.append(.list(tmp)); tmp = [] }
                tmp.append(item)
            }
            if !tmp.isEmpty {
                if let fill, !(fill.isNone), tmp.count < n { tmp += Array(repeating: fill, count: n - tmp.count) }
                out.append(.list(tmp))
            }
            return .list(out)
        case "capitalize": return .string(Strings.capitalize(v.str()))
        case "center":
            let width = try a.optional(0, "width").map { try Methods.intArg($0, "width") } ?? 80
            try checkSize(bytes: width)
            return .string(Strings.pad(v.str(), width: width, fill: " ", align: "^"))
        case "count", "length": return .int(try length(v))
        case "d", "default":
            let dflt = a.optional(0, "default_value") ?? .string("")
            let boolean = a.optional(1, "boolean")?.truthy ?? false
            if v.isUndefined || (boolean && !v.truthy) { return dflt }
            return v
        case "dictsort":
            if case .undefined(let u) = v { throw RenderError.undefined(u) }
            guard case .dict(let d) = v else { throw RenderError.type("'\(v.typeName)' object has no attribute 'items'") }
            let caseSensitive = a.optional(0, "case_sensitive")?.truthy ?? false
            let by = a.optional(1, "by") ?? .string("key")
            let reverse = a.optional(2, "reverse")?.truthy ?? false
            let pos: Int
            switch by {
            case .string("key"): pos = 0
            case .string("value"): pos = 1
            default: throw RenderError.runtime("You can only sort by either \"key\" or \"value\"")
            }
            let key = attrGetter(.int(pos), lowerStrings: !caseSensitive)
            let pairs = d.items.map { Value.tuple([$0.0, $0.1]) }
            return .list(try stableSort(pairs) { x, y in
                reverse ? try self.lessThan(try key(y), try key(x)) : try self.lessThan(try key(x), try key(y))
            })
        case "e", "escape":
            var s = ""
            for c in v.str().unicodeScalars {
                switch c {
                case "&": s += "&amp;"
                case "<": s += "&lt;"
                case ">": s += "&gt;"
                case "\"": s += "&#34;"
                case "'": s += "&#39;"
                default: s.unicodeScalars.append(c)
                }
            }
            try checkSize(bytes: s.utf8.count)
            return .string(s)
        case "first":
            let items: [Value]
            if case .string(let s) = v { items = s.unicodeScalars.first.map { [.string(String($0))] } ?? [] } else {
                items = try iterate(v)
            }
            return items.first ?? .undefined(UndefinedInfo(reason: .hint("No first item, sequence was empty.")))
        case "last":
            let items = try iterate(v)
            return items.last ?? .undefined(UndefinedInfo(reason: .hint("No last item, sequence was empty.")))
        case "float":
            let dflt = a.optional(0, "default") ?? .double(0)
            switch v {
            case .undefined(let u): throw RenderError.undefined(u)
            case .int, .bool, .double: return .double(v.doubleValue!)
            case .string(let s): return Interpreter.parsePyFloat(s).map { .double($0) } ?? dflt
            default: return dflt
            }
        case "int":
            let dflt = a.optional(0, "default") ?? .int(0)
            let base = try a.optional(1, "base").map { try Methods.intArg($0, "base") } ?? 10
            switch v {
            case .undefined(let u): throw RenderError.undefined(u)
            case .int, .bool: return .int(v.intValue!)
            case .double(let d): return try Interpreter.truncate(d)
            case .string(let s):
                if let i = Interpreter.parsePyInt(s, base: base) { return .int(i) }
                if let d = Interpreter.parsePyFloat(s) { return try Interpreter.truncate(d) }
                return dflt
            default: return dflt
            }
        case "indent":
            if case .undefined(let u) = v { throw RenderError.undefined(u) }
            let widthArg = a.optional(0, "width") ?? .int(4)
            let indention: String
            if case .string(let w) = widthArg { indention = w } else {
                let n = try Methods.intArg(widthArg, "width")
                try checkSize(bytes: n)
                indention = String(repeating: " ", count: max(0, n))
            }
            let first = a.optional(1, "first")?.truthy ?? false
            let blank = a.optional(2, "blank")?.truthy ?? false
            let lines = Strings.splitlines(Array((v.str() + "\n").unicodeScalars)).map { PyFormat.fromScalars($0) }
            var rv: String
            if blank {
                rv = lines.joined(separator: "\n" + indention)
            } else {
                var rest = lines
                rv = rest.isEmpty ? "" : rest.removeFirst()
                if !rest.isEmpty {
                    rv += "\n" + rest.map { $0.isEmpty ? $0 : indention + $0 }.joined(separator: "\n")
                }
            }
            if first { rv = indention + rv }
            try checkSize(bytes: rv.utf8.count)
            return .string(rv)
        case "items":
            switch v {
            case .undefined: return .list([])
            case .dict(let d): return .list(d.items.map { .tuple([$0.0, $0.1]) })
            default: throw RenderError.type("Can only get item pairs from a mapping.")
            }
        case "join":
            let sep = (a.optional(0, "d") ?? .string("")).str()
            var items = try iterate(v)
            if let attr = a.optional(1, "attribute"), !attr.isNone {
                let get = attrGetter(attr)
                items = try items.map(get)
            }
            var total = 0
            var parts: [String] = []
            for x in items {
                let s = x.str()
                total += s.utf8.count + sep.utf8.count
                try checkSize(bytes: total)
                parts.append(s)
            }
            try step(items.count)
            return .string(parts.joined(separator: sep))
        case "list": return .list(try iterate(v))
        case "lower": return .string(Strings.lower(v.str()))
        case "upper": return .string(Strings.upper(v.str()))
        case "map":
            let items = try iterate(v)
            try step(items.count)
            if args.isEmpty, let attr = kwargs.first(where: { $0.0 == "attribute" })?.1 {
                let dflt = kwargs.first(where: { $0.0 == "default" })?.1
                if let extra = kwargs.first(where: { $0.0 != "attribute" && $0.0 != "default" }) {
                    throw RenderError.runtime("Unexpected keyword argument '\(ChatTemplateError.snippet(extra.0))'")
                }
                let get = attrGetter(attr, default: dflt)
                return .list(try items.map(get))
            }
            guard case .string(let filterName)? = args.first else {
                throw RenderError.runtime("map requires a filter argument")
            }
            guard Filters.known.contains(filterName) else {
                throw RenderError.runtime("No filter named '\(ChatTemplateError.snippet(filterName))'.")
            }
            let rest = Array(args.dropFirst())
            return .list(try items.map { try self.applyFilter(filterName, $0, rest, kwargs) })
        case "max", "min":
            let items = try iterate(v)
            guard !items.isEmpty else {
                return .undefined(UndefinedInfo(reason: .hint("No aggregated item, sequence was empty.")))
            }
            try step(items.count)
            let caseSensitive = a.optional(0, "case_sensitive")?.truthy ?? false
            let key = attrGetter(a.optional(1, "attribute"), lowerStrings: !caseSensitive)
            var best = items[0]
            var bestKey = try key(best)
            for x in items.dropFirst() {
                let k = try key(x)
                if name == "min" ? try lessThan(k, bestKey) : try lessThan(bestKey, k) {
                    best = x
                    bestKey = k
                }
            }
            return best
        case "reject", "select", "rejectattr", "selectattr":
            let byAttr = name.hasSuffix("attr")
            let keep = name.hasPrefix("select")
            var transform: (Value) throws -> Value = { $0 }
            var off = 0
            if byAttr {
                guard let attr = args.first else { throw RenderError.runtime("Missing parameter for attribute name") }
                transform = attrGetter(attr)
                off = 1
            }
            var test: ((Value) throws -> Bool) = { $0.truthy }
            if args.count > off {
                guard case .string(let testName) = args[off] else { throw RenderError.runtime("test name must be a string") }
                guard Tests.known.contains(testName) else {
                    throw RenderError.runtime("No test named '\(ChatTemplateError.snippet(testName))'.")
                }
                let rest = Array(args.dropFirst(off + 1))
                test = { try self.applyTest(testName, $0, rest, kwargs) }
            }
            let items = try iterate(v)
            try step(items.count)
            return .list(try items.filter { try test(try transform($0)) == keep })
        case "replace":
            let old = try a.required(0, "old").str()
            let new = try a.required(1, "new").str()
            var count = -1
            if let c = a.optional(2, "count"), !c.isNone { count = try Methods.intArg(c, "count") }
            let r = Strings.replace(Array(v.str().unicodeScalars), Array(old.unicodeScalars), Array(new.unicodeScalars), count: count)
            let s = PyFormat.fromScalars(r)
            try checkSize(bytes: s.utf8.count)
            return .string(s)
        case "reverse":
            if case .string(let s) = v { return .string(PyFormat.fromScalars(s.unicodeScalars.reversed())) }
            return .list(try iterate(v).reversed())
        case "round":
            let precision = try a.optional(0, "precision").map { try Methods.intArg($0, "precision") } ?? 0
            let method = a.optional(1, "method") ?? .string("common")
            guard case .string(let m) = method, ["common", "ceil", "floor"].contains(m) else {
                throw RenderError.runtime("method must be common, ceil or floor")
            }
            switch v {
            case .int, .bool:
                if m == "common" { return .int(v.intValue!) }
                return .double(Double(v.intValue!))
            case .double(let d):
                if m == "common" { return .double(Interpreter.pyRound(d, precision)) }
                let p = pow(10.0, Double(precision))
                return .double((m == "ceil" ? (d * p).rounded(.up) : (d * p).rounded(.down)) / p)
            default:
                throw RenderError.type("type \(v.typeName) doesn't define __round__ method")
            }
        case "safe", "string": return .string(v.str())
        case "sort":
            let reverse = a.optional(0, "reverse")?.truthy ?? false
            let caseSensitive = a.optional(1, "case_sensitive")?.truthy ?? false
            let attr = a.optional(2, "attribute")
            var keys: [(Value) throws -> Value] = []
            if case .string(let s)? = attr, s.contains(",") {
                keys = s.split(separator: ",").map { attrGetter(.string(String($0)), lowerStrings: !caseSensitive) }
            } else {
                keys = [attrGetter(attr, lowerStrings: !caseSensitive)]
            }
            let composite: (Value) throws -> Value = { x in keys.count == 1 ? try keys[0](x) : .list(try keys.map { try $0(x) }) }
            return .list(try stableSort(try iterate(v)) { x, y in
                reverse ? try self.lessThan(try composite(y), try composite(x))
                    : try self.lessThan(try composite(x), try composite(y))
            })
        case "sum":
            var total = a.optional(1, "start") ?? .int(0)
            var items = try iterate(v)
            if let attr = a.optional(0, "attribute"), !attr.isNone { items = try items.map(attrGetter(attr)) }
            try step(items.count)
            for x in items { total = try Ops.binary("+", total, x, self) }
            return total
        case "title":
            // jinja2's do_title: capitalize each piece split at runs of -, whitespace, ( { [ <.
            var out = ""
            var word = String.UnicodeScalarView()
            var atStart = true
            for c in v.str().unicodeScalars {
                if c == "-" || PyFormat.isSpace(c) || c == "(" || c == "{" || c == "[" || c == "<" {
                    out += String(word)
                    word = String.UnicodeScalarView()
                    out.unicodeScalars.append(c)
                    atStart = true
                } else {
                    word.append(contentsOf: (atStart ? c.properties.uppercaseMapping : c.properties.lowercaseMapping).unicodeScalars)
                    atStart = false
                }
            }
            return .string(out + String(word))
        case "tojson":
            // transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
            var o = PyJSON.Options()
            o.ensureASCII = a.optional(0, "ensure_ascii")?.truthy ?? false
            if let ind = a.optional(1, "indent"), !ind.isNone {
                if case .string(let s) = ind { o.indent = s } else {
                    let n = try Methods.intArg(ind, "indent")
                    try checkSize(bytes: n)
                    o.indent = String(repeating: " ", count: max(0, n))
                }
                o.itemSeparator = ","
            }
            if let sep = a.optional(2, "separators"), !sep.isNone {
                let parts = try iterate(sep)
                guard parts.count == 2, case .string(let item) = parts[0], case .string(let key) = parts[1] else {
                    throw RenderError.value("separators must be a pair of strings")
                }
                o.itemSeparator = item
                o.keySeparator = key
            }
            o.sortKeys = a.optional(3, "sort_keys")?.truthy ?? false
            var s = ""
            try PyJSON.dumpChecked(v, into: &s, options: o, level: 0)
            try checkSize(bytes: s.utf8.count)
            return .string(s)
        case "trim":
            var chars: String? = nil
            if let c = a.optional(0, "chars"), !c.isNone { chars = c.str() }
            return .string(PyFormat.strip(v.str(), chars: chars, left: true, right: true))
        case "unique":
            let caseSensitive = a.optional(0, "case_sensitive")?.truthy ?? false
            let key = attrGetter(a.optional(1, "attribute"), lowerStrings: !caseSensitive)
            var seen = Set<HashKey>()
            var out: [Value] = []
            let items = try iterate(v)
            try step(items.count)
            for x in items where seen.insert(try HashKey(try key(x))).inserted { out.append(x) }
            return .list(out)
        case "wordcount":
            var n = 0
            var inWord = false
            for c in v.str().unicodeScalars {
                let w = c == "_" || c.properties.isAlphabetic || c.properties.numericType != nil
                if w && !inWord { n += 1 }
                inWord = w
            }
            return .int(n)
        default:
            throw RenderError.runtime("No filter named '\(ChatTemplateError.snippet(name))'.")
        }
    }

    static func truncate(_ d: Double) throws -> Value {
        guard d.isFinite else { throw RenderError.value("cannot convert float \(PyFormat.floatRepr(d)) to integer") }
        guard abs(d) < 9.2e18 else { throw RenderError.value("integer overflow (Kvant's template integers are 64-bit)") }
        return .int(Int(d))
    }

    /// Python `round(x, n)` for floats: correctly rounded, ties to even on the exact binary value.
    static func pyRound(_ d: Double, _ n: Int) -> Double {
        guard d.isFinite else { return d }
        if n >= 0 {
            guard n <= 300 else { return d }
            return Double(String(format: "%.\(n)f", d)) ?? d
        }
        let p = pow(10.0, Double(-n))
        return (d / p).rounded(.toNearestOrEven) * p
    }

    /// Python `int(s, base)` for strings: whitespace, sign, `_` between digits, prefixes for base 0/2/8/16.
    static func parsePyInt(_ s: String, base: Int) -> Int? {
        var t = Substring(PyFormat.strip(s, chars: nil, left: true, right: true))
        var negative = false
        if let f = t.first, f == "+" || f == "-" {
            negative = f == "-"
            t = t.dropFirst()
        }
        var radix = base
        let lower = t.lowercased()
        for (prefix, r) in [("0x", 16), ("0o", 8), ("0b", 2)] where lower.hasPrefix(prefix) && (base == 0 || base == r) {
            radix = r
            t = t.dropFirst(2)
            if t.first == "_" { t = t.dropFirst() }
            break
        }
        if radix == 0 {
            radix = 10
            if t.count > 1, t.allSatisfy({ $0 == "0" || $0 == "_" }) == false, t.first == "0" { return nil }
        }
        guard (2...36).contains(radix), !t.isEmpty, t.first != "_", t.last != "_", !t.contains("__") else { return nil }
        let digits = t.replacingOccurrences(of: "_", with: "")
        guard let v = Int(digits, radix: radix) else { return nil }
        return negative ? -v : v
    }

    /// Python `float(s)`.
    static func parsePyFloat(_ s: String) -> Double? {
        let t = PyFormat.strip(s, chars: nil, left: true, right: true)
        guard !t.isEmpty else { return nil }
        let lower = t.lowercased()
        var body = Substring(lower)
        var sign = 1.0
        if let f = body.first, f == "+" || f == "-" {
            sign = f == "-" ? -1 : 1
            body = body.dropFirst()
        }
        if body == "inf" || body == "infinity" { return sign * .infinity }
        if body == "nan" { return .nan }
        guard body.allSatisfy({ ("0"..."9").contains($0) || $0 == "." || $0 == "e" || $0 == "+" || $0 == "-" || $0 == "_" }),
              body.first != "_", body.last != "_", !body.contains("__")
        else { return nil }
        let chars = Array(body)
        for (i, c) in chars.enumerated() where c == "_" {
            guard i > 0, i + 1 < chars.count, chars[i - 1].isNumber, chars[i + 1].isNumber else { return nil }
        }
        return Double(body.replacingOccurrences(of: "_", with: "")).map { sign * $0 }
    }
}

extension Value {
    var isNone: Bool { if case .none = self { return true } else { return false } }
}
