import Foundation

/// Errors raised while rendering, before they get a position (see `Positioned`).
enum RenderError: Error {
    case undefined(UndefinedInfo)   // jinja2.exceptions.UndefinedError (or SecurityError for .unsafe)
    case type(String)               // Python TypeError
    case value(String)              // Python ValueError / OverflowError / ZeroDivisionError
    case raised(String)             // raise_exception(message)
    case runtime(String)            // jinja2 TemplateRuntimeError
    case limit(String)              // a Kvant resource limit
}

/// A render error with the offset of the innermost construct that raised it.
struct Positioned: Error {
    var error: RenderError
    var offset: Int
    var construct: String
}

/// Variables of one scope. Frames chain to their parent; jinja2's scoping is reproduced by creating
/// a frame per for-loop iteration, macro call and `with` block (not for `if`).
final class Frame {
    var vars: [String: Value] = [:]
    let parent: Frame?
    init(parent: Frame?) { self.parent = parent }

    func lookup(_ name: String) -> Value? {
        var f: Frame? = self
        while let cur = f {
            if let v = cur.vars[name] { return v }
            f = cur.parent
        }
        return nil
    }
}

enum Flow { case normal, breakLoop, continueLoop }

/// Tree-walking evaluator. One instance renders one template once.
final class Interpreter {
    let limits: ChatTemplate.Limits
    let now: Date
    let timeZone: TimeZone
    private(set) var out = ""
    private var outBytes = 0
    private var steps = 0
    private var depth = 0

    init(limits: ChatTemplate.Limits, now: Date, timeZone: TimeZone) {
        self.limits = limits
        self.now = now
        self.timeZone = timeZone
    }

    // MARK: resource accounting

    func step(_ n: Int = 1) throws {
        steps += n
        if steps > limits.maxSteps {
            throw RenderError.limit("the template ran more than \(limits.maxSteps) loop iterations and calls")
        }
    }

    private func enter() throws {
        depth += 1
        if depth > limits.maxDepth {
            throw RenderError.limit("the template nested more than \(limits.maxDepth) levels deep (recursion)")
        }
    }

    private func leave() { depth -= 1 }

    /// Checks a string about to be created against the output limit.
    func checkSize(bytes: Int) throws {
        if bytes > limits.maxOutputBytes {
            throw RenderError.limit("a string of the template grew past \(limits.maxOutputBytes) bytes")
        }
    }

    func checkCount(_ n: Int) throws {
        if n > limits.maxOutputBytes {
            throw RenderError.limit("a list of the template grew past \(limits.maxOutputBytes) items")
        }
    }

    private func write(_ s: String) throws {
        outBytes += s.utf8.count
        if outBytes > limits.maxOutputBytes {
            throw RenderError.limit("the rendered text grew past \(limits.maxOutputBytes) bytes")
        }
        out += s
    }

    /// Runs `body` writing into a fresh buffer and returns what it wrote.
    func capture(_ body: () throws -> Void) rethrows -> String {
        let saved = out
        let savedBytes = outBytes
        out = ""
        defer {
            out = saved
            outBytes = savedBytes
        }
        try body()
        return out
    }

    // MARK: statements

    func exec(_ stmts: [Stmt], _ f: Frame) throws -> Flow {
        for s in stmts {
            let flow = try exec(s, f)
            if flow != .normal { return flow }
        }
        return .normal
    }

    func exec(_ s: Stmt, _ f: Frame) throws -> Flow {
        try enter()
        defer { leave() }
        switch s.kind {
        case .data(let text):
            try write(text)
        case .output(let e):
            let v = try eval(e, f)
            try write(v.str())
        case .ifs(let branches, let orElse):
            for (test, body) in branches where try eval(test, f).truthy {
                return try exec(body, f)
            }
            return try exec(orElse, f)
        case .forLoop(let target, let iter, let filter, let body, let orElse, let recursive):
            let iterable = try eval(iter, f)
            return try runFor(target: target, iterable: iterable, filter: filter, body: body, orElse: orElse,
                              recursive: recursive, frame: f, depth0: 0, offset: s.offset)
        case .set(let target, let e):
            try assign(target, try eval(e, f), f, offset: s.offset)
        case .setBlock(let target, let filters, let body):
            var v = Value.string(try capture { _ = try exec(body, f) })
            v = try applyFilterChain(filters, v, f, offset: s.offset)
            try assign(target, v, f, offset: s.offset)
        case .macro(let def):
            f.vars[def.name] = .callable(CallableBox(.macro(makeMacro(def, f))))
        case .callBlock(let call, let callerDef):
            guard case .call(let callee, let args) = call.kind else { return .normal }
            let caller = Value.callable(CallableBox(.macro(makeMacro(callerDef, f))))
            let fn = try eval(callee, f)
            var (pos, kw) = try evalArgs(args, f)
            kw.append(("caller", caller))
            let v = try positioned(call.offset, "call") { try self.call(fn, pos, kw) }
            try write(v.str())
        case .filterBlock(let filters, let body):
            let text = try capture { _ = try exec(body, f) }
            try write(try applyFilterChain(filters, .string(text), f, offset: s.offset).str())
        case .with(let pairs, let body):
            let inner = Frame(parent: f)
            for (target, e) in pairs { try assign(target, try eval(e, f), inner, offset: s.offset) }
            return try exec(body, inner)
        case .breakLoop:
            return .breakLoop
        case .continueLoop:
            return .continueLoop
        case .body(let body):
            return try exec(body, f)
        }
        return .normal
    }

    private func makeMacro(_ def: MacroDef, _ f: Frame) -> Macro {
        Macro(name: def.name, params: def.params, defaults: def.defaults, body: def.body, frame: f,
              catchVarargs: def.usesVarargs, catchKwargs: def.usesKwargs, callerBody: def.usesCaller)
    }

    private func runFor(target: Target, iterable: Value, filter: Expr?, body: [Stmt], orElse: [Stmt],
                        recursive: Bool, frame f: Frame, depth0: Int, offset: Int) throws -> Flow
    {
        var items = try positioned(offset, "for loop") { try self.iterate(iterable) }
        if let filter {
            var kept: [Value] = []
            for item in items {
                try step()
                let tf = Frame(parent: f)
                try assign(target, item, tf, offset: offset)
                if try eval(filter, tf).truthy { kept.append(item) }
            }
            items = kept
        }
        if items.isEmpty {
            return try exec(orElse, f)
        }
        var recurse: ((Value) throws -> String)? = nil
        if recursive {
            recurse = { [unowned self] newIterable in
                try self.enter()
                defer { self.leave() }
                return try self.capture {
                    _ = try self.runFor(target: target, iterable: newIterable, filter: filter, body: body, orElse: [],
                                        recursive: true, frame: f, depth0: depth0 + 1, offset: offset)
                }
            }
        }
        let box = LoopBox(items: items, depth0: depth0, recurse: recurse)
        for (i, item) in items.enumerated() {
            try step()
            box.index0 = i
            let inner = Frame(parent: f)
            inner.vars["loop"] = .loop(box)
            try assign(target, item, inner, offset: offset)
            if try exec(body, inner) == .breakLoop { break }
        }
        return .normal
    }

    func assign(_ target: Target, _ v: Value, _ f: Frame, offset: Int) throws {
        switch target {
        case .name(let n):
            f.vars[n] = v
        case .tuple(let targets):
            let items = try positioned(offset, "unpacking") { try self.iterate(v) }
            guard items.count == targets.count else {
                throw Positioned(error: .value(items.count > targets.count
                    ? "too many values to unpack (expected \(targets.count))"
                    : "not enough values to unpack (expected \(targets.count), got \(items.count))"),
                    offset: offset, construct: "unpacking")
            }
            for (t, x) in zip(targets, items) { try assign(t, x, f, offset: offset) }
        case .nsAttr(let name, let attr):
            guard case .namespace(let ns)? = f.lookup(name) else {
                throw Positioned(error: .runtime("cannot assign attribute on non-namespace object"), offset: offset,
                                 construct: "set")
            }
            if !fitsInNamespace(v, depth: 0) {
                throw Positioned(error: .limit("a namespace attribute may not hold a namespace or a value nested more than \(limits.maxDepth) levels deep"),
                                 offset: offset, construct: "set")
            }
            try ns.dict.set(.string(attr), v)
        }
    }

    /// Namespace attributes are the only values that live across loop iterations: refusing namespaces
    /// (cycles) and over-deep nesting there keeps every value finite and shallow.
    private func fitsInNamespace(_ v: Value, depth: Int) -> Bool {
        if depth > limits.maxDepth { return false }
        switch v {
        case .namespace, .loop: return false
        case .list(let xs), .tuple(let xs): return xs.allSatisfy { fitsInNamespace($0, depth: depth + 1) }
        case .dict(let d): return d.values.allSatisfy { fitsInNamespace($0, depth: depth + 1) }
        default: return true
        }
    }

    // MARK: expressions

    /// Runs `body`, giving any unpositioned render error the offset and construct name.
    func positioned<T>(_ offset: Int, _ construct: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as RenderError {
            throw Positioned(error: e, offset: offset, construct: construct)
        }
    }

    func eval(_ e: Expr, _ f: Frame) throws -> Value {
        try enter()
        defer { leave() }
        do {
            return try evalInner(e, f)
        } catch let r as RenderError {
            throw Positioned(error: r, offset: e.offset, construct: Interpreter.describe(e))
        }
    }

    static func describe(_ e: Expr) -> String {
        switch e.kind {
        case .const: return "literal"
        case .name(let n): return "variable '\(ChatTemplateError.snippet(n))'"
        case .list: return "list literal"
        case .tuple: return "tuple"
        case .dict: return "dict literal"
        case .getattr(_, let a): return "attribute '.\(ChatTemplateError.snippet(a))'"
        case .getitem: return "subscript"
        case .slice: return "slice"
        case .call(let fn, _):
            switch fn.kind {
            case .name(let n): return "call of '\(ChatTemplateError.snippet(n))'"
            case .getattr(_, let a): return "call of '.\(ChatTemplateError.snippet(a))()'"
            default: return "call"
            }
        case .filter(_, let n, _): return "filter '\(n)'"
        case .test(_, let n, _): return "test 'is \(n)'"
        case .not: return "'not'"
        case .neg, .pos: return "unary operator"
        case .binary(let op, _, _): return "operator '\(op)'"
        case .and: return "'and'"
        case .or: return "'or'"
        case .concat: return "operator '~'"
        case .compare(_, let ops): return "comparison '\(ops.first?.0 == "notin" ? "not in" : ops.first?.0 ?? "")'"
        case .cond: return "conditional expression"
        }
    }

    private func evalInner(_ e: Expr, _ f: Frame) throws -> Value {
        switch e.kind {
        case .const(let v): return v
        case .name(let n): return lookup(n, f)
        case .list(let xs): return .list(try xs.map { try eval($0, f) })
        case .tuple(let xs): return .tuple(try xs.map { try eval($0, f) })
        case .dict(let pairs):
            var d = PyDict()
            for (k, v) in pairs { try d.set(try eval(k, f), try eval(v, f)) }
            return .dict(d)
        case .getattr(let obj, let name):
            return try getattr(try eval(obj, f), name)
        case .getitem(let obj, let key):
            let o = try eval(obj, f)
            if case .slice(let a, let b, let c) = key.kind {
                return try slice(o, a.map { try eval($0, f) }, b.map { try eval($0, f) }, c.map { try eval($0, f) })
            }
            return try getitem(o, try eval(key, f))
        case .slice:
            throw RenderError.type("slice outside a subscript")
        case .call(let fn, let args):
            let callee = try eval(fn, f)
            let (pos, kw) = try evalArgs(args, f)
            return try call(callee, pos, kw)
        case .filter(let x, let name, let args):
            let v = try x.map { try eval($0, f) } ?? .undefined(UndefinedInfo(reason: .hint("no value")))
            let (pos, kw) = try evalArgs(args, f)
            return try applyFilter(name, v, pos, kw)
        case .test(let x, let name, let args):
            let v = try eval(x, f)
            let (pos, kw) = try evalArgs(args, f)
            return .bool(try applyTest(name, v, pos, kw))
        case .not(let x): return .bool(!(try eval(x, f).truthy))
        case .neg(let x): return try Ops.negate(try eval(x, f))
        case .pos(let x): return try Ops.plus(try eval(x, f))
        case .binary(let op, let a, let b): return try Ops.binary(op, try eval(a, f), try eval(b, f), self)
        case .and(let a, let b):
            let l = try eval(a, f)
            return l.truthy ? try eval(b, f) : l
        case .or(let a, let b):
            let l = try eval(a, f)
            return l.truthy ? l : try eval(b, f)
        case .concat(let xs):
            var s = ""
            for x in xs {
                s += try eval(x, f).str()
                try checkSize(bytes: s.utf8.count)
            }
            return .string(s)
        case .compare(let first, let ops):
            var left = try eval(first, f)
            for (op, rhs) in ops {
                let right = try eval(rhs, f)
                if !(try Ops.compare(op, left, right)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .cond(let test, let then, let orElse):
            if try eval(test, f).truthy { return try eval(then, f) }
            if let orElse { return try eval(orElse, f) }
            return .undefined(UndefinedInfo(reason: .hint(
                "the inline if-expression evaluated to false and no else section was defined.")))
        }
    }

    private func lookup(_ n: String, _ f: Frame) -> Value {
        if let v = f.lookup(n) { return v }
        if Builtins.globals.contains(n) { return .callable(CallableBox(.builtin(n))) }
        return .undefinedName(n)
    }

    func evalArgs(_ a: CallArgs, _ f: Frame) throws -> ([Value], [(String, Value)]) {
        var pos = try a.args.map { try eval($0, f) }
        var kw = try a.kwargs.map { ($0.0, try eval($0.1, f)) }
        if let d = a.dynArgs { pos += try iterate(try eval(d, f)) }
        if let d = a.dynKwargs {
            guard case .dict(let dict) = try eval(d, f) else {
                throw RenderError.type("argument after ** must be a mapping")
            }
            for (k, v) in dict.items {
                guard case .string(let key) = k else { throw RenderError.type("keywords must be strings") }
                kw.append((key, v))
            }
        }
        return (pos, kw)
    }

    func applyFilterChain(_ filters: [(String, CallArgs)], _ v: Value, _ f: Frame, offset: Int) throws -> Value {
        var v = v
        for (name, args) in filters {
            let (pos, kw) = try evalArgs(args, f)
            let input = v
            v = try positioned(offset, "filter '\(name)'") { try self.applyFilter(name, input, pos, kw) }
        }
        return v
    }

    // MARK: calls

    func call(_ callee: Value, _ args: [Value], _ kwargs: [(String, Value)]) throws -> Value {
        switch callee {
        case .callable(let c):
            switch c.kind {
            case .builtin(let name): return try Builtins.call(name, args, kwargs, self)
            case .method(let receiver, let name): return try Methods.call(receiver, name, args, kwargs, self)
            case .macro(let m): return try callMacro(m, args, kwargs)
            case .loopRecurse(let box):
                guard let recurse = box.recurse else {
                    throw RenderError.type("Tried to call non recursive loop.  Maybe you forgot the 'recursive' modifier.")
                }
                guard args.count == 1 else { throw RenderError.type("loop() takes exactly one argument") }
                return .string(try recurse(args[0]))
            case .unsafe(let t, let a):
                throw RenderError.undefined(UndefinedInfo(reason: .unsafe(objType: t, a)))
            }
        case .undefined(let u):
            throw RenderError.undefined(u)
        case .loop(let box):
            return try call(.callable(CallableBox(.loopRecurse(box))), args, kwargs)
        default:
            throw RenderError.type("'\(callee.typeName)' object is not callable")
        }
    }

    private func callMacro(_ m: Macro, _ args: [Value], _ kwargs: [(String, Value)]) throws -> Value {
        try step()
        try enter()
        defer { leave() }
        let frame = Frame(parent: m.frame)
        var kw = kwargs
        if args.count > m.params.count && !m.catchVarargs {
            throw RenderError.type("macro '\(m.name)' takes not more than \(m.params.count) argument(s)")
        }
        for (i, p) in m.params.enumerated() {
            if let k = kw.firstIndex(where: { $0.0 == p }) {
                if i < args.count { throw RenderError.type("macro '\(m.name)' got multiple values for argument '\(p)'") }
                frame.vars[p] = kw[k].1
                kw.remove(at: k)
            } else if i < args.count {
                frame.vars[p] = args[i]
            } else if let d = m.defaults[i] {
                frame.vars[p] = try eval(d, frame)
            } else {
                frame.vars[p] = .undefined(UndefinedInfo(reason: .hint("parameter '\(p)' was not provided")))
            }
        }
        if let k = kw.firstIndex(where: { $0.0 == "caller" }) {
            frame.vars["caller"] = kw[k].1
            kw.remove(at: k)
        }
        if m.catchVarargs { frame.vars["varargs"] = .tuple(Array(args.dropFirst(m.params.count))) }
        if m.catchKwargs {
            var d = PyDict()
            for (k, v) in kw { try d.set(.string(k), v) }
            frame.vars["kwargs"] = .dict(d)
        } else if let extra = kw.first {
            throw RenderError.type("macro '\(m.name)' takes no keyword argument '\(ChatTemplateError.snippet(extra.0))'")
        }
        return .string(try capture { _ = try exec(m.body, frame) })
    }

    // MARK: iteration, attributes, items

    /// Python `list(iter(x))` for the iterables a template can hold.
    func iterate(_ v: Value) throws -> [Value] {
        switch v {
        case .list(let xs), .tuple(let xs): return xs
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .dict(let d): return d.keys
        case .undefined: return []
        case .namespace: throw RenderError.type("'Namespace' object is not iterable")
        default: throw RenderError.type("'\(v.typeName)' object is not iterable")
        }
    }

    /// `len(x)`.
    func length(_ v: Value) throws -> Int {
        switch v {
        case .list(let xs), .tuple(let xs): return xs.count
        case .string(let s): return s.unicodeScalars.count
        case .dict(let d): return d.count
        case .undefined: return 0
        default: throw RenderError.type("object of type '\(v.typeName)' has no len()")
        }
    }

    /// `x.name` in the sandbox: a Python attribute (method) first, then the item `x['name']`.
    func getattr(_ v: Value, _ name: String) throws -> Value {
        if case .undefined(let u) = v { throw RenderError.undefined(u) }
        if name.hasPrefix("_") {
            return .undefined(UndefinedInfo(reason: .unsafe(objType: v.typeName, name)))
        }
        if let m = Methods.attribute(v, name) { return m }
        switch v {
        case .dict(let d):
            if let x = try d.get(.string(name)) { return x }
        case .namespace(let ns):
            if let x = try ns.dict.get(.string(name)) { return x }
        case .loop(let box):
            if let x = loopAttribute(box, name) { return x }
        default: break
        }
        return .undefined(UndefinedInfo(reason: .attribute(objType: v.objectTypeRepr, name)))
    }

    private func loopAttribute(_ b: LoopBox, _ name: String) -> Value? {
        switch name {
        case "index": return .int(b.index0 + 1)
        case "index0": return .int(b.index0)
        case "revindex": return .int(b.length - b.index0)
        case "revindex0": return .int(b.length - b.index0 - 1)
        case "first": return .bool(b.index0 == 0)
        case "last": return .bool(b.index0 == b.length - 1)
        case "length": return .int(b.length)
        case "depth": return .int(b.depth0 + 1)
        case "depth0": return .int(b.depth0)
        case "previtem":
            return b.index0 > 0 ? b.items[b.index0 - 1]
                : .undefined(UndefinedInfo(reason: .hint("there is no previous item")))
        case "nextitem":
            return b.index0 + 1 < b.length ? b.items[b.index0 + 1]
                : .undefined(UndefinedInfo(reason: .hint("there is no next item")))
        case "cycle", "changed": return .callable(CallableBox(.method(receiver: .loop(b), name: name)))
        default: return nil
        }
    }

    /// `x[key]`: the item, then (for a string key) the attribute.
    func getitem(_ v: Value, _ key: Value) throws -> Value {
        switch v {
        case .undefined(let u): throw RenderError.undefined(u)
        case .dict(let d):
            if let x = try? d.get(key) { return x }
        case .list(let xs), .tuple(let xs):
            if let i = key.intValue, let x = pyIndex(xs.count, i).map({ xs[$0] }) { return x }
        case .string(let s):
            if let i = key.intValue {
                let scalars = Array(s.unicodeScalars)
                if let j = pyIndex(scalars.count, i) { return .string(String(scalars[j])) }
            }
        default: break
        }
        if case .string(let name) = key { return try getattr(v, name) }
        return .undefined(UndefinedInfo(reason: .element(objType: v.objectTypeRepr, key.repr())))
    }

    private func pyIndex(_ count: Int, _ i: Int) -> Int? {
        let j = i < 0 ? count + i : i
        return j >= 0 && j < count ? j : nil
    }

    func slice(_ v: Value, _ a: Value?, _ b: Value?, _ c: Value?) throws -> Value {
        if case .undefined(let u) = v { throw RenderError.undefined(u) }
        func bound(_ x: Value?) throws -> Int? {
            guard let x else { return nil }
            if case .none = x { return nil }
            guard let i = x.intValue else {
                throw RenderError.type("slice indices must be integers or None or have an __index__ method")
            }
            return i
        }
        let step = try bound(c) ?? 1
        guard step != 0 else { throw RenderError.value("slice step cannot be zero") }
        func indices(_ n: Int) throws -> [Int] {
            var start = try bound(a)
            var stop = try bound(b)
            if step > 0 {
                start = start.map { $0 < 0 ? max(0, $0 + n) : min($0, n) } ?? 0
                stop = stop.map { $0 < 0 ? max(0, $0 + n) : min($0, n) } ?? n
                return start! < stop! ? Array(stride(from: start!, to: stop!, by: step)) : []
            } else {
                start = start.map { $0 < 0 ? max(-1, $0 + n) : min($0, n - 1) } ?? n - 1
                stop = stop.map { $0 < 0 ? max(-1, $0 + n) : min($0, n - 1) } ?? -1
                return start! > stop! ? Array(stride(from: start!, to: stop!, by: step)) : []
            }
        }
        switch v {
        case .list(let xs): return .list(try indices(xs.count).map { xs[$0] })
        case .tuple(let xs): return .tuple(try indices(xs.count).map { xs[$0] })
        case .string(let s):
            let scalars = Array(s.unicodeScalars)
            return .string(PyFormat.fromScalars(try indices(scalars.count).map { scalars[$0] }))
        default:
            return .undefined(UndefinedInfo(reason: .element(objType: v.objectTypeRepr, "slice")))
        }
    }
}
