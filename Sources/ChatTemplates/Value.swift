import Foundation

/// Why a value is undefined, for the error raised when the template uses it (jinja2's
/// `Undefined._undefined_message`).
struct UndefinedInfo {
    enum Reason {
        case name(String)                        // 'x' is undefined
        case attribute(objType: String, String)  // 'dict object' has no attribute 'x'
        case element(objType: String, String)    // list object has no element 3
        case hint(String)
        case unsafe(objType: String, String)     // sandbox: access to attribute 'append' of 'list' object is unsafe.
    }
    var reason: Reason

    /// Names and keys come from the template or its data: capped and escaped.
    var message: String {
        func c(_ s: String) -> String { ChatTemplateError.snippet(s) }
        switch reason {
        case .name(let n): return "'\(c(n))' is undefined"
        case .attribute(let t, let a): return "'\(t) object' has no attribute '\(c(a))'"
        case .element(let t, let e): return "\(t) object has no element \(c(e))"
        case .hint(let h): return h
        case .unsafe(let t, let a): return "access to attribute '\(c(a))' of '\(t)' object is unsafe."
        }
    }
    var isSecurity: Bool { if case .unsafe = reason { return true } else { return false } }
}

/// A Python-dict-like ordered map with hashable keys (str, int, float, bool, None, tuples).
struct PyDict {
    private(set) var keys: [Value] = []
    private(set) var values: [Value] = []
    private var index: [HashKey: Int] = [:]

    init() {}

    var count: Int { keys.count }

    func get(_ key: Value) throws -> Value? {
        guard let i = index[try HashKey(key)] else { return nil }
        return values[i]
    }

    /// Python semantics: an existing equal key keeps its original key object and position.
    mutating func set(_ key: Value, _ value: Value) throws {
        let h = try HashKey(key)
        if let i = index[h] { values[i] = value } else {
            index[h] = keys.count
            keys.append(key)
            values.append(value)
        }
    }

    func contains(_ key: Value) throws -> Bool { index[try HashKey(key)] != nil }

    var items: [(Value, Value)] { Array(zip(keys, values)) }
}

/// Hash identity of a dict key, following Python: `True == 1 == 1.0` share one slot.
enum HashKey: Hashable {
    case none
    case int(Int)
    case double(Double)
    case string(PyString)
    indirect case tuple([HashKey])

    init(_ v: Value) throws {
        switch v {
        case .none: self = .none
        case .bool(let b): self = .int(b ? 1 : 0)
        case .int(let i): self = .int(i)
        case .double(let d):
            if d.rounded() == d, abs(d) < 9.2e18 { self = .int(Int(d)) } else { self = .double(d) }
        case .string(let s): self = .string(PyString(s))
        case .tuple(let xs): self = .tuple(try xs.map { try HashKey($0) })
        default: throw RenderError.type("unhashable type: '\(v.typeName)'")
        }
    }
}

/// A string compared and hashed by Unicode scalars, as Python compares `str` (Swift's `String`
/// compares by canonical equivalence, under which "é" and "e\u{301}" are equal).
struct PyString: Hashable {
    let s: String
    init(_ s: String) { self.s = s }
    static func == (a: PyString, b: PyString) -> Bool { a.s.utf8.elementsEqual(b.s.utf8) }
    func hash(into h: inout Hasher) {
        for b in s.utf8 { h.combine(b) }
    }
}

final class NamespaceBox {
    var dict = PyDict()
}

/// The `loop` variable of a for loop.
final class LoopBox {
    var index0 = 0
    let length: Int
    let items: [Value]
    let depth0: Int
    var lastChanged: [Value]? = nil
    /// Renders the loop body again over another iterable (`{% for … recursive %}` → `loop(xs)`).
    let recurse: ((Value) throws -> String)?

    init(items: [Value], depth0: Int, recurse: ((Value) throws -> String)?) {
        self.items = items
        self.length = items.count
        self.depth0 = depth0
        self.recurse = recurse
    }
}

/// Something a template can call.
final class CallableBox {
    enum Kind {
        case builtin(String)                // global function by name (range, dict, namespace, …)
        case method(receiver: Value, name: String)
        case macro(Macro)
        case loopRecurse(LoopBox)
        case unsafe(typeName: String, attr: String)
    }
    let kind: Kind
    init(_ kind: Kind) { self.kind = kind }

    var displayName: String {
        switch kind {
        case .builtin(let n): return n
        case .method(_, let n): return n
        case .macro(let m): return m.name
        case .loopRecurse: return "loop"
        case .unsafe(_, let a): return a
        }
    }
}

/// A macro (or a `{% call %}` block's `caller`) with the frame it was defined in.
final class Macro {
    let name: String
    let params: [String]
    let defaults: [Expr?]
    let body: [Stmt]
    let frame: Frame
    let catchVarargs: Bool
    let catchKwargs: Bool
    let callerBody: Bool

    init(name: String, params: [String], defaults: [Expr?], body: [Stmt], frame: Frame, catchVarargs: Bool,
         catchKwargs: Bool, callerBody: Bool)
    {
        self.name = name
        self.params = params
        self.defaults = defaults
        self.body = body
        self.frame = frame
        self.catchVarargs = catchVarargs
        self.catchKwargs = catchKwargs
        self.callerBody = callerBody
    }
}

/// A runtime value: Python's object model, reduced to what chat templates can produce.
enum Value {
    case undefined(UndefinedInfo)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([Value])
    case tuple([Value])
    case dict(PyDict)
    case namespace(NamespaceBox)
    case callable(CallableBox)
    case loop(LoopBox)

    init(_ j: JinjaValue) {
        switch j {
        case .null: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .list(a.map(Value.init))
        case .object(let o):
            var d = PyDict()
            for (k, v) in o { try? d.set(.string(k), Value(v)) }
            self = .dict(d)
        }
    }

    static func undefinedName(_ n: String) -> Value { .undefined(UndefinedInfo(reason: .name(n))) }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// Python's `type(x).__name__`.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .list: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .callable(let c):
            if case .macro = c.kind { return "Macro" }
            return "builtin_function_or_method"
        case .loop: return "LoopContext"
        }
    }

    /// jinja2's `object_type_repr` base ("dict", "list", …; "None" for None).
    var objectTypeRepr: String {
        if case .none = self { return "None" }
        return typeName
    }

    /// Python truthiness.
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .list(let xs), .tuple(let xs): return !xs.isEmpty
        case .dict(let d): return d.count > 0
        case .namespace, .callable, .loop: return true
        }
    }

    var isNumber: Bool {
        switch self {
        case .bool, .int, .double: return true
        default: return false
        }
    }

    /// Python's `str(x)`.
    func str() -> String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr()
        }
    }

    /// Python's `repr(x)`.
    func repr() -> String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return PyFormat.floatRepr(d)
        case .string(let s): return PyFormat.stringRepr(s)
        case .list(let xs): return "[" + xs.map { $0.repr() }.joined(separator: ", ") + "]"
        case .tuple(let xs):
            if xs.count == 1 { return "(" + xs[0].repr() + ",)" }
            return "(" + xs.map { $0.repr() }.joined(separator: ", ") + ")"
        case .dict(let d):
            return "{" + d.items.map { $0.0.repr() + ": " + $0.1.repr() }.joined(separator: ", ") + "}"
        case .namespace(let ns): return "<Namespace " + Value.dict(ns.dict).repr() + ">"
        case .callable(let c):
            if case .macro(let m) = c.kind { return "<Macro '\(m.name)'>" }
            return "<built-in method \(c.displayName)>"
        case .loop(let l): return "<LoopContext \(l.index0 + 1)/\(l.length)>"
        }
    }

    /// Python `==`.
    static func pyEqual(_ a: Value, _ b: Value) -> Bool {
        switch (a, b) {
        case (.undefined, .undefined): return true
        case (.undefined, _), (_, .undefined): return false
        case (.none, .none): return true
        case (.string(let x), .string(let y)): return x.utf8.elementsEqual(y.utf8)
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { pyEqual($0, $1) }
        case (.dict(let x), .dict(let y)):
            guard x.count == y.count else { return false }
            for (k, v) in x.items {
                guard let w = try? y.get(k), pyEqual(v, w) else { return false }
            }
            return true
        case (.namespace(let x), .namespace(let y)): return x === y
        case (.callable(let x), .callable(let y)): return x === y
        case (.loop(let x), .loop(let y)): return x === y
        default:
            if a.isNumber && b.isNumber { return numericCompare(a, b) == 0 }
            return false
        }
    }

    /// -1/0/1 for two numbers (int, float, bool), nan compares unequal to everything.
    static func numericCompare(_ a: Value, _ b: Value) -> Int? {
        switch (a.intValue, b.intValue) {
        case (let x?, let y?): return x < y ? -1 : (x == y ? 0 : 1)
        default:
            guard let x = a.doubleValue, let y = b.doubleValue else { return nil }
            if x.isNaN || y.isNaN { return nil }
            return x < y ? -1 : (x == y ? 0 : 1)
        }
    }

    /// Python ordering (`<`); TypeError between unorderable types.
    static func pyCompare(_ a: Value, _ b: Value, op: String) throws -> Int? {
        if case .undefined(let u) = a { throw RenderError.undefined(u) }
        if case .undefined(let u) = b { throw RenderError.undefined(u) }
        if a.isNumber && b.isNumber { return numericCompare(a, b) }
        switch (a, b) {
        case (.string(let x), .string(let y)):
            return x.utf8.lexicographicallyPrecedes(y.utf8) ? -1 : (x.utf8.elementsEqual(y.utf8) ? 0 : 1)
        case (.list(let x), .list(let y)), (.tuple(let x), .tuple(let y)):
            for (p, q) in zip(x, y) where !pyEqual(p, q) {
                return try pyCompare(p, q, op: op)
            }
            return x.count < y.count ? -1 : (x.count == y.count ? 0 : 1)
        default:
            throw RenderError.type("'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'")
        }
    }

    /// Int view of int and bool.
    var intValue: Int? {
        switch self {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// Double view of int, bool and float.
    var doubleValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .bool(let b): return b ? 1 : 0
        case .double(let d): return d
        default: return nil
        }
    }

    /// Converts back to the public JSON-shaped value (tuples become arrays, keys `str()`).
    func toJinjaValue() -> JinjaValue? {
        switch self {
        case .none: return .null
        case .bool(let b): return .bool(b)
        case .int(let i): return .int(i)
        case .double(let d): return .double(d)
        case .string(let s): return .string(s)
        case .list(let xs), .tuple(let xs):
            var out: [JinjaValue] = []
            for x in xs {
                guard let j = x.toJinjaValue() else { return nil }
                out.append(j)
            }
            return .array(out)
        case .dict(let d):
            var o = JinjaObject()
            for (k, v) in d.items {
                guard let j = v.toJinjaValue() else { return nil }
                o[k.str()] = j
            }
            return .object(o)
        default: return nil
        }
    }
}
