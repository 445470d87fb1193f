/// A template syntax error: position (offset in the normalized source) and what was expected.
struct TemplateSyntaxError: Error {
    var message: String
    var offset: Int
}

/// Recursive-descent parser following jinja2's `Parser` (jinja2/parser.py, 3.1) for the statements
/// transformers' environment enables (the built-in ones plus `break`/`continue` from
/// `jinja2.ext.loopcontrols` and `{% generation %}`). Template-loading tags (`include`, `import`,
/// `extends`, `block`, `from`) are rejected: a chat template is one self-contained string.
struct Parser {
    private var tokens: [Token]
    private var i = 0
    private var endTokenStack: [[String]] = []
    private var tagStack: [String] = []
    private var loopDepth = 0
    private var depth = 0
    private let maxDepth: Int

    init(tokens: [Token], maxDepth: Int) {
        self.tokens = tokens
        self.maxDepth = maxDepth
    }

    static func parse(_ tokens: [Token], endOffset: Int, maxDepth: Int) throws -> [Stmt] {
        var toks = tokens
        toks.append(Token(kind: .eof, offset: endOffset))
        var p = Parser(tokens: toks, maxDepth: maxDepth)
        return try p.subparse(nil)
    }

    // MARK: token stream

    private var current: Token { tokens[i] }
    private func look(_ n: Int = 1) -> Token { tokens[min(i + n, tokens.count - 1)] }
    private mutating func advance() -> Token {
        let t = tokens[i]
        if i < tokens.count - 1 { i += 1 }
        return t
    }

    private func isName(_ t: Token, _ value: String) -> Bool { t.kind == .name && t.text == value }
    private func isOp(_ t: Token, _ value: String) -> Bool { t.kind == .op && t.text == value }

    private func fail(_ msg: String, _ offset: Int? = nil) -> TemplateSyntaxError {
        TemplateSyntaxError(message: msg, offset: offset ?? current.offset)
    }

    private mutating func skipOp(_ op: String) -> Bool {
        if isOp(current, op) { _ = advance(); return true }
        return false
    }

    private mutating func skipName(_ name: String) -> Bool {
        if isName(current, name) { _ = advance(); return true }
        return false
    }

    private mutating func expectOp(_ op: String) throws {
        guard isOp(current, op) else {
            if current.kind == .eof { throw fail("unexpected end of template, expected '\(op)'.") }
            throw fail("expected token '\(op)', got '\(current.described)'")
        }
        _ = advance()
    }

    private mutating func expect(_ kind: Token.Kind, _ what: String) throws -> Token {
        guard current.kind == kind else {
            if current.kind == .eof { throw fail("unexpected end of template, expected '\(what)'.") }
            throw fail("expected token '\(what)', got '\(current.described)'")
        }
        return advance()
    }

    private mutating func expectName(_ value: String) throws {
        guard isName(current, value) else {
            if current.kind == .eof { throw fail("unexpected end of template, expected '\(value)'.") }
            throw fail("expected token '\(value)', got '\(current.described)'")
        }
        _ = advance()
    }

    private mutating func nested<T>(_ body: (inout Parser) throws -> T) throws -> T {
        depth += 1
        defer { depth -= 1 }
        guard depth <= maxDepth else { throw fail("template nested more deeply than \(maxDepth) levels") }
        return try body(&self)
    }

    // MARK: statements

    private mutating func subparse(_ endTokens: [String]?) throws -> [Stmt] {
        var body: [Stmt] = []
        if let endTokens { endTokenStack.append(endTokens) }
        defer { if endTokens != nil { endTokenStack.removeLast() } }
        while current.kind != .eof {
            let t = current
            switch t.kind {
            case .data:
                body.append(Stmt(.data(t.text), t.offset))
                _ = advance()
            case .variableBegin:
                _ = advance()
                let e = try parseTuple()
                _ = try expect(.variableEnd, "end of print statement")
                body.append(Stmt(.output(e), t.offset))
            case .blockBegin:
                _ = advance()
                if let endTokens, current.kind == .name, endTokens.contains(current.text) { return body }
                body.append(contentsOf: try nested { try $0.parseStatement() })
                _ = try expect(.blockEnd, "end of statement block")
            default:
                throw fail("unexpected '\(t.described)'")
            }
        }
        return body
    }

    private func unknownTag(_ name: String, _ offset: Int) -> TemplateSyntaxError {
        var msg = "Encountered unknown tag '\(ChatTemplateError.snippet(name))'."
        if let expected = endTokenStack.last {
            msg += " Jinja was looking for the following tags: "
                + expected.map { "'\($0)'" }.joined(separator: " or ") + "."
            if let tag = tagStack.last { msg += " The innermost block that needs to be closed is '\(tag)'." }
        }
        return fail(msg, offset)
    }

    private func eofError(_ expectedTags: [String]?) -> TemplateSyntaxError {
        var msg = "Unexpected end of template."
        if let expected = expectedTags ?? endTokenStack.last {
            msg += " Jinja was looking for the following tags: "
                + expected.map { "'\($0)'" }.joined(separator: " or ") + "."
            if let tag = tagStack.last { msg += " The innermost block that needs to be closed is '\(tag)'." }
        }
        return fail(msg)
    }

    private mutating func parseStatements(_ endTokens: [String], dropNeedle: Bool = false) throws -> [Stmt] {
        _ = skipOp(":")
        _ = try expect(.blockEnd, "end of statement block")
        let result = try subparse(endTokens)
        if current.kind == .eof { throw eofError(endTokens) }
        if dropNeedle { _ = advance() }
        return result
    }

    private mutating func parseStatement() throws -> [Stmt] {
        let t = current
        guard t.kind == .name else { throw fail("tag name expected") }
        switch t.text {
        case "for", "if", "set", "macro", "call", "filter", "with", "print", "generation":
            tagStack.append(t.text)
            defer { tagStack.removeLast() }
            switch t.text {
            case "for": return [try parseFor()]
            case "if": return [try parseIf()]
            case "set": return [try parseSet()]
            case "macro": return [try parseMacro()]
            case "call": return [try parseCallBlock()]
            case "filter": return [try parseFilterBlock()]
            case "with": return [try parseWith()]
            case "print": return try parsePrint()
            default:
                _ = advance()
                let body = try parseStatements(["endgeneration"], dropNeedle: true)
                return [Stmt(.body(body), t.offset)]
            }
        case "break", "continue":
            _ = advance()
            guard loopDepth > 0 else { throw fail("'\(t.text)' outside loop", t.offset) }
            return [Stmt(t.text == "break" ? .breakLoop : .continueLoop, t.offset)]
        case "include", "import", "from", "extends", "block":
            throw fail("tag '\(t.text)' is not supported: a chat template cannot load or extend other templates", t.offset)
        case "autoescape":
            throw fail("tag 'autoescape' is not supported (chat templates render without autoescaping)", t.offset)
        default:
            throw unknownTag(t.text, t.offset)
        }
    }

    private mutating func parsePrint() throws -> [Stmt] {
        let start = advance().offset
        var out: [Stmt] = []
        while current.kind != .blockEnd {
            if !out.isEmpty { try expectOp(",") }
            out.append(Stmt(.output(try parseExpression()), start))
        }
        return out
    }

    private mutating func parseFor() throws -> Stmt {
        let start = advance().offset
        let target = try parseAssignTarget(extraEnd: ["in"])
        try expectName("in")
        let iter = try parseTuple(withCondExpr: false, extraEnd: ["recursive"])
        var filter: Expr? = nil
        if skipName("if") { filter = try parseExpression() }
        let recursive = skipName("recursive")
        loopDepth += 1
        let body = try parseStatements(["endfor", "else"])
        loopDepth -= 1
        var orElse: [Stmt] = []
        if advance().text != "endfor" {
            orElse = try parseStatements(["endfor"], dropNeedle: true)
        }
        return Stmt(.forLoop(target: target, iter: iter, filter: filter, body: body, orElse: orElse, recursive: recursive), start)
    }

    private mutating func parseIf() throws -> Stmt {
        let start = advance().offset
        var branches: [(Expr, [Stmt])] = []
        var orElse: [Stmt] = []
        while true {
            let test = try parseTuple(withCondExpr: false)
            let body = try parseStatements(["elif", "else", "endif"])
            branches.append((test, body))
            let t = advance()
            if t.text == "elif" { continue }
            if t.text == "else" { orElse = try parseStatements(["endif"], dropNeedle: true) }
            break
        }
        return Stmt(.ifs(branches, orElse), start)
    }

    private mutating func parseSet() throws -> Stmt {
        let start = advance().offset
        let target = try parseAssignTarget(withNamespace: true)
        if skipOp("=") {
            return Stmt(.set(target, try parseTuple()), start)
        }
        let filters = try parseFilterChain(startInline: false).map { ($0.0, $0.1) }
        let body = try parseStatements(["endset"], dropNeedle: true)
        return Stmt(.setBlock(target, filters, body), start)
    }

    private mutating func parseWith() throws -> Stmt {
        let start = advance().offset
        var pairs: [(Target, Expr)] = []
        while current.kind != .blockEnd {
            if !pairs.isEmpty { try expectOp(",") }
            let target = try parseAssignTarget()
            try expectOp("=")
            pairs.append((target, try parseExpression()))
        }
        let body = try parseStatements(["endwith"], dropNeedle: true)
        return Stmt(.with(pairs, body), start)
    }

    private mutating func parseSignature() throws -> ([String], [Expr?]) {
        var params: [String] = []
        var defaults: [Expr?] = []
        try expectOp("(")
        var sawDefault = false
        while !isOp(current, ")") {
            if !params.isEmpty { try expectOp(",") }
            let name = try expect(.name, "name").text
            if skipOp("=") {
                defaults.append(try parseExpression())
                sawDefault = true
            } else {
                if sawDefault { throw fail("non-default argument follows default argument") }
                defaults.append(nil)
            }
            params.append(name)
        }
        try expectOp(")")
        return (params, defaults)
    }

    private mutating func macroBody(_ end: String) throws -> [Stmt] {
        let savedLoop = loopDepth
        loopDepth = 0
        defer { loopDepth = savedLoop }
        return try parseStatements([end], dropNeedle: true)
    }

    private mutating func parseMacro() throws -> Stmt {
        let start = advance().offset
        let name = try expect(.name, "name").text
        let (params, defaults) = try parseSignature()
        let body = try macroBody("endmacro")
        let used = NameCollector.names(in: body)
        let def = MacroDef(name: name, params: params, defaults: defaults, body: body,
                           usesVarargs: used.contains("varargs"), usesKwargs: used.contains("kwargs"),
                           usesCaller: used.contains("caller"))
        return Stmt(.macro(def), start)
    }

    private mutating func parseCallBlock() throws -> Stmt {
        let start = advance().offset
        var params: [String] = []
        var defaults: [Expr?] = []
        if isOp(current, "(") { (params, defaults) = try parseSignature() }
        let callOffset = current.offset
        let call = try parseExpression()
        guard case .call = call.kind else { throw fail("expected call", callOffset) }
        let body = try macroBody("endcall")
        let used = NameCollector.names(in: body)
        let def = MacroDef(name: "caller", params: params, defaults: defaults, body: body,
                           usesVarargs: used.contains("varargs"), usesKwargs: used.contains("kwargs"),
                           usesCaller: used.contains("caller"))
        return Stmt(.callBlock(call: call, caller: def), start)
    }

    private mutating func parseFilterBlock() throws -> Stmt {
        let start = advance().offset
        let filters = try parseFilterChain(startInline: true).map { ($0.0, $0.1) }
        let body = try parseStatements(["endfilter"], dropNeedle: true)
        return Stmt(.filterBlock(filters, body), start)
    }

    /// `name`, `a, b`, `(a, b)` or (`set` only) `ns.attr`.
    private mutating func parseAssignTarget(extraEnd: [String] = [], withNamespace: Bool = false) throws -> Target {
        var targets: [Target] = []
        var isTuple = false
        while true {
            if !targets.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEnd) { break }
            targets.append(try parseTargetPrimary(withNamespace: withNamespace))
            if isOp(current, ",") { isTuple = true } else { break }
        }
        if !isTuple {
            guard let t = targets.first else { throw fail("Expected an expression, got '\(current.described)'") }
            return t
        }
        return .tuple(targets)
    }

    private mutating func parseTargetPrimary(withNamespace: Bool) throws -> Target {
        let t = current
        switch t.kind {
        case .name:
            if ["true", "false", "True", "False", "none", "None"].contains(t.text) {
                throw fail("can't assign to 'const'", t.offset)
            }
            _ = advance()
            if withNamespace && isOp(current, ".") {
                _ = advance()
                let attr = try expect(.name, "name").text
                return .nsAttr(t.text, attr)
            }
            return .name(t.text)
        case .op where t.text == "(":
            _ = advance()
            let inner = try parseAssignTarget()
            try expectOp(")")
            return inner
        case .string, .integer, .float:
            throw fail("can't assign to 'const'", t.offset)
        default:
            throw fail("can't assign to '\(t.described)'", t.offset)
        }
    }

    // MARK: expressions

    private func isTupleEnd(_ extraEnd: [String] = []) -> Bool {
        switch current.kind {
        case .variableEnd, .blockEnd, .eof: return true
        case .op: return current.text == ")"
        case .name: return extraEnd.contains(current.text)
        default: return false
        }
    }

    private mutating func parseTuple(withCondExpr: Bool = true, extraEnd: [String] = [],
                                     explicitParens: Bool = false) throws -> Expr
    {
        let start = current.offset
        var args: [Expr] = []
        var isTuple = false
        while true {
            if !args.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEnd) { break }
            args.append(withCondExpr ? try parseExpression() : try parseOr())
            if isOp(current, ",") { isTuple = true } else { break }
        }
        if !isTuple {
            if let a = args.first { return a }
            if !explicitParens {
                if current.kind == .eof { throw fail("unexpected end of template, expected an expression.") }
                throw fail("Expected an expression, got '\(current.described)'")
            }
        }
        return Expr(.tuple(args), start)
    }

    private mutating func parseExpression() throws -> Expr {
        try nested { p in
            let start = p.current.offset
            var e = try p.parseOr()
            while p.skipName("if") {
                let test = try p.parseOr()
                var orElse: Expr? = nil
                if p.skipName("else") { orElse = try p.parseExpression() }
                e = Expr(.cond(test, e, orElse), start)
            }
            return e
        }
    }

    private mutating func parseOr() throws -> Expr {
        let start = current.offset
        var left = try parseAnd()
        while skipName("or") { left = Expr(.or(left, try parseAnd()), start) }
        return left
    }

    private mutating func parseAnd() throws -> Expr {
        let start = current.offset
        var left = try parseNot()
        while skipName("and") { left = Expr(.and(left, try parseNot()), start) }
        return left
    }

    private mutating func parseNot() throws -> Expr {
        if isName(current, "not") {
            let start = advance().offset
            return Expr(.not(try nested { try $0.parseNot() }), start)
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> Expr {
        let start = current.offset
        let expr = try parseMath1()
        var ops: [(String, Expr)] = []
        while true {
            if current.kind == .op, ["==", "!=", "<", "<=", ">", ">="].contains(current.text) {
                let op = advance().text
                ops.append((op, try parseMath1()))
            } else if skipName("in") {
                ops.append(("in", try parseMath1()))
            } else if isName(current, "not") && isName(look(), "in") {
                _ = advance(); _ = advance()
                ops.append(("notin", try parseMath1()))
            } else {
                break
            }
        }
        return ops.isEmpty ? expr : Expr(.compare(expr, ops), start)
    }

    private mutating func parseMath1() throws -> Expr {
        var left = try parseConcat()
        while current.kind == .op, current.text == "+" || current.text == "-" {
            let op = advance()
            left = Expr(.binary(op.text, left, try parseConcat()), op.offset)
        }
        return left
    }

    private mutating func parseConcat() throws -> Expr {
        let start = current.offset
        var args = [try parseMath2()]
        while skipOp("~") { args.append(try parseMath2()) }
        return args.count == 1 ? args[0] : Expr(.concat(args), start)
    }

    private mutating func parseMath2() throws -> Expr {
        var left = try parsePow()
        while current.kind == .op, ["*", "/", "//", "%"].contains(current.text) {
            let op = advance()
            left = Expr(.binary(op.text, left, try parsePow()), op.offset)
        }
        return left
    }

    private mutating func parsePow() throws -> Expr {
        var left = try parseUnary()
        while isOp(current, "**") {
            let op = advance()
            left = Expr(.binary("**", left, try parseUnary()), op.offset)
        }
        return left
    }

    private mutating func parseUnary(withFilter: Bool = true) throws -> Expr {
        try nested { p in
            let start = p.current.offset
            var node: Expr
            if p.isOp(p.current, "-") {
                _ = p.advance()
                node = Expr(.neg(try p.parseUnary(withFilter: false)), start)
            } else if p.isOp(p.current, "+") {
                _ = p.advance()
                node = Expr(.pos(try p.parseUnary(withFilter: false)), start)
            } else {
                node = try p.parsePrimary()
            }
            node = try p.parsePostfix(node)
            if withFilter { node = try p.parseFilterExpr(node) }
            return node
        }
    }

    private mutating func parsePrimary() throws -> Expr {
        let t = current
        switch t.kind {
        case .name:
            _ = advance()
            switch t.text {
            case "true", "True": return Expr(.const(.bool(true)), t.offset)
            case "false", "False": return Expr(.const(.bool(false)), t.offset)
            case "none", "None": return Expr(.const(.none), t.offset)
            default: return Expr(.name(t.text), t.offset)
            }
        case .string:
            _ = advance()
            var s = t.text
            while current.kind == .string { s += advance().text }
            return Expr(.const(.string(s)), t.offset)
        case .integer:
            _ = advance()
            guard t.int != Int.max || t.text == String(Int.max) else {
                throw fail("integer literal too large for 64 bits", t.offset)
            }
            return Expr(.const(.int(t.int)), t.offset)
        case .float:
            _ = advance()
            return Expr(.const(.double(t.double)), t.offset)
        case .op where t.text == "(":
            _ = advance()
            let e = try parseTuple(explicitParens: true)
            try expectOp(")")
            return e
        case .op where t.text == "[":
            _ = advance()
            var items: [Expr] = []
            while !isOp(current, "]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp(current, "]") { break }
                items.append(try parseExpression())
            }
            try expectOp("]")
            return Expr(.list(items), t.offset)
        case .op where t.text == "{":
            _ = advance()
            var items: [(Expr, Expr)] = []
            while !isOp(current, "}") {
                if !items.isEmpty { try expectOp(",") }
                if isOp(current, "}") { break }
                let k = try parseExpression()
                try expectOp(":")
                items.append((k, try parseExpression()))
            }
            try expectOp("}")
            return Expr(.dict(items), t.offset)
        case .eof:
            throw fail("unexpected end of template, expected an expression.")
        default:
            throw fail("unexpected '\(t.described)'")
        }
    }

    private mutating func parsePostfix(_ node: Expr) throws -> Expr {
        var node = node
        while true {
            if isOp(current, ".") || isOp(current, "[") {
                node = try parseSubscript(node)
            } else if isOp(current, "(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }

    private mutating func parseFilterExpr(_ node: Expr) throws -> Expr {
        var node = node
        while true {
            if isOp(current, "|") {
                let filters = try parseFilterChain(startInline: false)
                for (name, args, offset) in filters { node = Expr(.filter(node, name, args), offset) }
            } else if isName(current, "is") {
                node = try parseTest(node)
            } else if isOp(current, "(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }

    private mutating func parseSubscript(_ node: Expr) throws -> Expr {
        let t = advance()
        if t.text == "." {
            let a = advance()
            if a.kind == .name { return Expr(.getattr(node, a.text), t.offset) }
            guard a.kind == .integer else { throw fail("expected name or number", a.offset) }
            return Expr(.getitem(node, Expr(.const(.int(a.int)), a.offset)), t.offset)
        }
        var args: [Expr] = []
        while !isOp(current, "]") {
            if !args.isEmpty { try expectOp(",") }
            args.append(try parseSubscribed())
        }
        try expectOp("]")
        let arg = args.count == 1 ? args[0] : Expr(.tuple(args), t.offset)
        return Expr(.getitem(node, arg), t.offset)
    }

    private mutating func parseSubscribed() throws -> Expr {
        let start = current.offset
        var parts: [Expr?] = []
        if isOp(current, ":") {
            _ = advance()
            parts = [nil]
        } else {
            let e = try parseExpression()
            guard isOp(current, ":") else { return e }
            _ = advance()
            parts = [e]
        }
        if isOp(current, ":") {
            parts.append(nil)
        } else if !isOp(current, "]") && !isOp(current, ",") {
            parts.append(try parseExpression())
        } else {
            parts.append(nil)
        }
        if isOp(current, ":") {
            _ = advance()
            if !isOp(current, "]") && !isOp(current, ",") { parts.append(try parseExpression()) } else { parts.append(nil) }
        } else {
            parts.append(nil)
        }
        return Expr(.slice(parts[0], parts[1], parts[2]), start)
    }

    private mutating func parseCallArgs() throws -> CallArgs {
        let open = current.offset
        try expectOp("(")
        var a = CallArgs()
        var requireComma = false
        func ensure(_ ok: Bool) throws {
            if !ok { throw TemplateSyntaxError(message: "invalid syntax for function call expression", offset: open) }
        }
        while !isOp(current, ")") {
            if requireComma {
                try expectOp(",")
                if isOp(current, ")") { break }
            }
            if isOp(current, "*") {
                try ensure(a.dynArgs == nil && a.dynKwargs == nil)
                _ = advance()
                a.dynArgs = try parseExpression()
            } else if isOp(current, "**") {
                try ensure(a.dynKwargs == nil)
                _ = advance()
                a.dynKwargs = try parseExpression()
            } else if current.kind == .name, isOp(look(), "=") {
                try ensure(a.dynKwargs == nil)
                let key = advance().text
                _ = advance()
                a.kwargs.append((key, try parseExpression()))
            } else {
                try ensure(a.dynArgs == nil && a.dynKwargs == nil && a.kwargs.isEmpty)
                a.args.append(try parseExpression())
            }
            requireComma = true
        }
        try expectOp(")")
        return a
    }

    private mutating func parseCall(_ node: Expr) throws -> Expr {
        Expr(.call(node, try parseCallArgs()), node.offset)
    }

    private mutating func parseFilterChain(startInline: Bool) throws -> [(String, CallArgs, Int)] {
        var out: [(String, CallArgs, Int)] = []
        var inline = startInline
        while isOp(current, "|") || inline {
            if !inline { _ = advance() }
            inline = false
            let nameTok = try expect(.name, "name")
            var name = nameTok.text
            while isOp(current, ".") {
                _ = advance()
                name += "." + (try expect(.name, "name").text)
            }
            guard Filters.known.contains(name) else { throw fail("No filter named '\(ChatTemplateError.snippet(name))'.", nameTok.offset) }
            let args = isOp(current, "(") ? try parseCallArgs() : CallArgs()
            out.append((name, args, nameTok.offset))
        }
        return out
    }

    private mutating func parseTest(_ node: Expr) throws -> Expr {
        let isTok = advance()
        let negated = skipName("not")
        let nameTok = try expect(.name, "name")
        var name = nameTok.text
        while isOp(current, ".") {
            _ = advance()
            name += "." + (try expect(.name, "name").text)
        }
        guard Tests.known.contains(name) else { throw fail("No test named '\(ChatTemplateError.snippet(name))'.", nameTok.offset) }
        var args = CallArgs()
        if isOp(current, "(") {
            args = try parseCallArgs()
        } else if [.name, .string, .integer, .float].contains(current.kind) || isOp(current, "(")
                    || isOp(current, "[") || isOp(current, "{"),
                  !(isName(current, "else") || isName(current, "or") || isName(current, "and"))
        {
            if isName(current, "is") { throw fail("You cannot chain multiple tests with is") }
            let arg = try parsePostfix(try parsePrimary())
            args.args = [arg]
        }
        let test = Expr(.test(node, name, args), isTok.offset)
        return negated ? Expr(.not(test), isTok.offset) : test
    }
}

/// Names an AST reads (to decide whether a macro catches `varargs`, `kwargs` or `caller`, as jinja2's
/// code generator does).
enum NameCollector {
    static func names(in body: [Stmt]) -> Set<String> {
        var out = Set<String>()
        for s in body { visit(s, &out) }
        return out
    }

    private static func visit(_ s: Stmt, _ out: inout Set<String>) {
        switch s.kind {
        case .data, .breakLoop, .continueLoop: break
        case .output(let e): visit(e, &out)
        case .ifs(let branches, let orElse):
            for (t, b) in branches { visit(t, &out); b.forEach { visit($0, &out) } }
            orElse.forEach { visit($0, &out) }
        case .forLoop(_, let iter, let filter, let body, let orElse, _):
            visit(iter, &out)
            if let filter { visit(filter, &out) }
            body.forEach { visit($0, &out) }
            orElse.forEach { visit($0, &out) }
        case .set(_, let e): visit(e, &out)
        case .setBlock(_, let filters, let body):
            filters.forEach { visit($0.1, &out) }
            body.forEach { visit($0, &out) }
        case .macro(let m): m.defaults.forEach { if let d = $0 { visit(d, &out) } }
        case .callBlock(let call, let caller):
            visit(call, &out)
            caller.defaults.forEach { if let d = $0 { visit(d, &out) } }
        case .filterBlock(let filters, let body):
            filters.forEach { visit($0.1, &out) }
            body.forEach { visit($0, &out) }
        case .with(let pairs, let body):
            pairs.forEach { visit($0.1, &out) }
            body.forEach { visit($0, &out) }
        case .body(let body): body.forEach { visit($0, &out) }
        }
    }

    private static func visit(_ a: CallArgs, _ out: inout Set<String>) {
        a.args.forEach { visit($0, &out) }
        a.kwargs.forEach { visit($0.1, &out) }
        if let d = a.dynArgs { visit(d, &out) }
        if let d = a.dynKwargs { visit(d, &out) }
    }

    private static func visit(_ e: Expr, _ out: inout Set<String>) {
        switch e.kind {
        case .const: break
        case .name(let n): out.insert(n)
        case .list(let xs), .tuple(let xs), .concat(let xs): xs.forEach { visit($0, &out) }
        case .dict(let pairs): pairs.forEach { visit($0.0, &out); visit($0.1, &out) }
        case .getattr(let x, _), .not(let x), .neg(let x), .pos(let x): visit(x, &out)
        case .getitem(let x, let y), .binary(_, let x, let y), .and(let x, let y), .or(let x, let y):
            visit(x, &out); visit(y, &out)
        case .slice(let a, let b, let c): [a, b, c].forEach { if let x = $0 { visit(x, &out) } }
        case .call(let f, let args): visit(f, &out); visit(args, &out)
        case .filter(let x, _, let args):
            if let x { visit(x, &out) }
            visit(args, &out)
        case .test(let x, _, let args): visit(x, &out); visit(args, &out)
        case .compare(let x, let ops): visit(x, &out); ops.forEach { visit($0.1, &out) }
        case .cond(let t, let a, let b):
            visit(t, &out); visit(a, &out)
            if let b { visit(b, &out) }
        }
    }
}
