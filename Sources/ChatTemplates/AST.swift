/// Syntax tree of a template (the subset of jinja2's `nodes` that chat templates use).
final class Expr {
    enum Kind {
        case const(Value)
        case name(String)
        case list([Expr])
        case tuple([Expr])
        case dict([(Expr, Expr)])
        case getattr(Expr, String)
        case getitem(Expr, Expr)
        case slice(Expr?, Expr?, Expr?)
        case call(Expr, CallArgs)
        case filter(Expr?, String, CallArgs)
        case test(Expr, String, CallArgs)
        case not(Expr)
        case neg(Expr)
        case pos(Expr)
        case binary(String, Expr, Expr)      // + - * / // % **
        case and(Expr, Expr)
        case or(Expr, Expr)
        case concat([Expr])
        case compare(Expr, [(String, Expr)])  // == != < <= > >= in notin
        case cond(Expr, Expr, Expr?)          // test, then, else
    }
    let kind: Kind
    let offset: Int
    init(_ kind: Kind, _ offset: Int) {
        self.kind = kind
        self.offset = offset
    }
}

struct CallArgs {
    var args: [Expr] = []
    var kwargs: [(String, Expr)] = []
    var dynArgs: Expr? = nil
    var dynKwargs: Expr? = nil
}

/// Assignment target of `set`, `for` and `with`.
indirect enum Target {
    case name(String)
    case tuple([Target])
    case nsAttr(String, String)

    var names: [String] {
        switch self {
        case .name(let n): return [n]
        case .tuple(let ts): return ts.flatMap { $0.names }
        case .nsAttr: return []
        }
    }
}

struct MacroDef {
    var name: String
    var params: [String]
    var defaults: [Expr?]
    var body: [Stmt]
    var usesVarargs: Bool
    var usesKwargs: Bool
    var usesCaller: Bool
}

final class Stmt {
    enum Kind {
        case data(String)
        case output(Expr)
        case ifs([(Expr, [Stmt])], [Stmt])
        case forLoop(target: Target, iter: Expr, filter: Expr?, body: [Stmt], orElse: [Stmt], recursive: Bool)
        case set(Target, Expr)
        case setBlock(Target, [(String, CallArgs)], [Stmt])
        case macro(MacroDef)
        case callBlock(call: Expr, caller: MacroDef)
        case filterBlock([(String, CallArgs)], [Stmt])
        case with([(Target, Expr)], [Stmt])
        case breakLoop
        case continueLoop
        case body([Stmt])  // {% generation %}: renders its body
    }
    let kind: Kind
    let offset: Int
    init(_ kind: Kind, _ offset: Int) {
        self.kind = kind
        self.offset = offset
    }
}
