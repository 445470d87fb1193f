import Foundation

/// Python's operators on template values.
enum Ops {
    static func negate(_ v: Value) throws -> Value {
        switch v {
        case .undefined(let u): throw RenderError.undefined(u)
        case .int(let i):
            guard i != Int.min else { throw RenderError.value("integer overflow") }
            return .int(-i)
        case .bool(let b): return .int(b ? -1 : 0)
        case .double(let d): return .double(-d)
        default: throw RenderError.type("bad operand type for unary -: '\(v.typeName)'")
        }
    }

    static func plus(_ v: Value) throws -> Value {
        switch v {
        case .undefined(let u): throw RenderError.undefined(u)
        case .int, .double: return v
        case .bool(let b): return .int(b ? 1 : 0)
        default: throw RenderError.type("bad operand type for unary +: '\(v.typeName)'")
        }
    }

    private static func unsupported(_ op: String, _ a: Value, _ b: Value) -> RenderError {
        .type("unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'")
    }

    private static func overflow() -> RenderError { .value("integer overflow (Kvant's template integers are 64-bit)") }

    static func binary(_ op: String, _ a: Value, _ b: Value, _ interp: Interpreter) throws -> Value {
        if case .undefined(let u) = a { throw RenderError.undefined(u) }
        if case .undefined(let u) = b { throw RenderError.undefined(u) }
        if a.isNumber && b.isNumber { return try arithmetic(op, a, b) }
        switch op {
        case "+":
            switch (a, b) {
            case (.string(let x), .string(let y)):
                try interp.checkSize(bytes: x.utf8.count + y.utf8.count)
                return .string(x + y)
            case (.list(let x), .list(let y)):
                try interp.checkCount(x.count + y.count)
                return .list(x + y)
            case (.tuple(let x), .tuple(let y)):
                try interp.checkCount(x.count + y.count)
                return .tuple(x + y)
            case (.string, _), (.list, _), (.tuple, _):
                return try { throw RenderError.type("can only concatenate \(a.typeName) (not \"\(b.typeName)\") to \(a.typeName)") }()
            default: throw unsupported("+", a, b)
            }
        case "*":
            func repeated(_ count: Int, _ seq: Value) throws -> Value {
                let n = max(0, count)
                switch seq {
                case .string(let s):
                    let (total, o) = s.utf8.count.multipliedReportingOverflow(by: n)
                    guard !o else { throw RenderError.limit("string repetition too large") }
                    try interp.checkSize(bytes: total)
                    return .string(String(repeating: s, count: n))
                case .list(let xs), .tuple(let xs):
                    let (total, o) = xs.count.multipliedReportingOverflow(by: n)
                    guard !o else { throw RenderError.limit("list repetition too large") }
                    try interp.checkCount(total)
                    var r: [Value] = []
                    r.reserveCapacity(total)
                    for _ in 0..<n { r += xs }
                    if case .tuple = seq { return .tuple(r) }
                    return .list(r)
                default: throw unsupported("*", a, b)
                }
            }
            if let n = b.intValue, !a.isNumber { return try repeated(n, a) }
            if let n = a.intValue, !b.isNumber { return try repeated(n, b) }
            if case .double = a, !b.isNumber { throw RenderError.type("can't multiply sequence by non-int of type 'float'") }
            if case .double = b, !a.isNumber { throw RenderError.type("can't multiply sequence by non-int of type 'float'") }
            throw unsupported("*", a, b)
        case "%":
            if case .string = a { throw RenderError.type("printf-style string formatting ('%' on a string) is not supported") }
            throw unsupported("%", a, b)
        default:
            throw unsupported(op, a, b)
        }
    }

    private static func arithmetic(_ op: String, _ a: Value, _ b: Value) throws -> Value {
        if let x = a.intValue, let y = b.intValue {
            switch op {
            case "+":
                let (r, o) = x.addingReportingOverflow(y)
                if o { throw overflow() }
                return .int(r)
            case "-":
                let (r, o) = x.subtractingReportingOverflow(y)
                if o { throw overflow() }
                return .int(r)
            case "*":
                let (r, o) = x.multipliedReportingOverflow(by: y)
                if o { throw overflow() }
                return .int(r)
            case "/":
                guard y != 0 else { throw RenderError.value("division by zero") }
                return .double(Double(x) / Double(y))
            case "//":
                guard y != 0 else { throw RenderError.value("integer division or modulo by zero") }
                if x == Int.min && y == -1 { throw overflow() }
                var q = x / y
                if (x % y != 0) && ((x < 0) != (y < 0)) { q -= 1 }
                return .int(q)
            case "%":
                guard y != 0 else { throw RenderError.value("integer division or modulo by zero") }
                if y == -1 { return .int(0) }
                var r = x % y
                if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .int(r)
            case "**":
                if y < 0 { return .double(pow(Double(x), Double(y))) }
                var result = 1
                var base = x
                var e = y
                while e > 0 {
                    if e & 1 == 1 {
                        let (r, o) = result.multipliedReportingOverflow(by: base)
                        if o { throw overflow() }
                        result = r
                    }
                    e >>= 1
                    if e > 0 {
                        let (bb, o) = base.multipliedReportingOverflow(by: base)
                        if o { throw overflow() }
                        base = bb
                    }
                }
                return .int(result)
            default: throw RenderError.type("unknown operator \(op)")
            }
        }
        let x = a.doubleValue!, y = b.doubleValue!
        switch op {
        case "+": return .double(x + y)
        case "-": return .double(x - y)
        case "*": return .double(x * y)
        case "/":
            guard y != 0 else { throw RenderError.value("float division by zero") }
            return .double(x / y)
        case "//":
            guard y != 0 else { throw RenderError.value("float floor division by zero") }
            return .double(pyFloatMod(x, y).div)
        case "%":
            guard y != 0 else { throw RenderError.value("float modulo") }
            return .double(pyFloatMod(x, y).mod)
        case "**":
            if x == 0 && y < 0 { throw RenderError.value("0.0 cannot be raised to a negative power") }
            let r = pow(x, y)
            if r.isNaN && !x.isNaN && !y.isNaN { throw RenderError.value("math domain error (negative number to a fractional power)") }
            return .double(r)
        default: throw RenderError.type("unknown operator \(op)")
        }
    }

    /// CPython's float_divmod.
    private static func pyFloatMod(_ vx: Double, _ wx: Double) -> (div: Double, mod: Double) {
        var mod = fmod(vx, wx)
        var div = (vx - mod) / wx
        if mod != 0 {
            if (wx < 0) != (mod < 0) {
                mod += wx
                div -= 1
            }
        } else {
            mod = copysign(0, wx)
        }
        var floordiv: Double
        if div != 0 {
            floordiv = div.rounded(.down)
            if div - floordiv > 0.5 { floordiv += 1 }
        } else {
            floordiv = copysign(0, vx / wx)
        }
        return (floordiv, mod)
    }

    static func compare(_ op: String, _ a: Value, _ b: Value) throws -> Bool {
        switch op {
        case "==": return Value.pyEqual(a, b)
        case "!=": return !Value.pyEqual(a, b)
        case "in": return try contains(b, a)
        case "notin": return !(try contains(b, a))
        default:
            guard let c = try Value.pyCompare(a, b, op: op) else { return false }
            switch op {
            case "<": return c < 0
            case "<=": return c <= 0
            case ">": return c > 0
            default: return c >= 0
            }
        }
    }

    /// Python `needle in container`.
    static func contains(_ container: Value, _ needle: Value) throws -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let n) = needle else {
                if case .undefined(let u) = needle { throw RenderError.undefined(u) }
                throw RenderError.type("'in <string>' requires string as left operand, not \(needle.typeName)")
            }
            return Strings.find(Array(s.unicodeScalars), Array(n.unicodeScalars), from: 0) != nil
        case .list(let xs), .tuple(let xs): return xs.contains { Value.pyEqual($0, needle) }
        case .dict(let d):
            if case .undefined = needle { return false }
            return try d.contains(needle)
        case .undefined: return false
        default:
            throw RenderError.type("argument of type '\(container.typeName)' is not iterable")
        }
    }
}
