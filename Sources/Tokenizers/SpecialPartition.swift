/// One piece of the input after special tokens were split out: raw text (a byte range of the input)
/// or a special token id.
enum Fragment: Equatable {
    case raw(start: Int, end: Int)
    case token(Int32)
}

/// Splits text at occurrences of special tokens (control, user-defined, unknown), longest token first,
/// each token at every non-overlapping leftmost occurrence in the remaining raw fragments — the
/// algorithm of llama.cpp's `llama_vocab::impl::tokenizer_st_partition` (src/llama-vocab.cpp),
/// including its lstrip/rstrip handling.
///
/// To stay fast with thousands of special tokens, a byte trie first finds which special tokens occur
/// anywhere in the input; only those are processed (in the same order), which gives the same result:
/// a token absent from the input cannot occur in any of its fragments.
struct SpecialPartitioner {
    /// Special token ids, longest first.
    let ordered: [Int32]
    /// Trie edges: (node << 8 | byte) → child node; node 0 is the root.
    private var edges: [Int: Int32] = [:]
    /// Token ending at each trie node, or -1.
    private var terminal: [Int32] = [-1]

    init(vocabulary v: Vocabulary, ordered: [Int32]) {
        self.ordered = ordered
        edges.reserveCapacity(ordered.count * 8)
        for id in ordered {
            var node = 0
            for b in v.textBytes(Int(id)) {
                let key = node << 8 | Int(b)
                if let child = edges[key] {
                    node = Int(child)
                } else {
                    terminal.append(-1)
                    let child = terminal.count - 1
                    edges[key] = Int32(child)
                    node = child
                }
            }
            if node != 0 { terminal[node] = id }
        }
    }

    /// Ids of special tokens occurring somewhere in `text`.
    private func present(in text: UnsafeBufferPointer<UInt8>) -> Set<Int32> {
        var found = Set<Int32>()
        for i in 0..<text.count {
            var node = 0
            var j = i
            while j < text.count, let child = edges[node << 8 | Int(text[j])] {
                node = Int(child)
                if terminal[node] >= 0 { found.insert(terminal[node]) }
                j += 1
            }
        }
        return found
    }

    private static func isSpace(_ b: UInt8) -> Bool {
        // C isspace in the "C" locale
        b == 0x20 || (b >= 0x09 && b <= 0x0D)
    }

    /// `parseSpecial == false` skips control and unknown tokens (user-defined ones are still split out).
    func partition(_ text: UnsafeBufferPointer<UInt8>, vocabulary v: Vocabulary, parseSpecial: Bool) -> [Fragment] {
        guard !text.isEmpty else { return [] }
        var fragments: [Fragment] = [.raw(start: 0, end: text.count)]
        let candidates = present(in: text)
        if candidates.isEmpty { return fragments }
        for id in ordered where candidates.contains(id) {
            let attr = v.attributes[Int(id)]
            if !parseSpecial && !attr.isDisjoint(with: [.control, .unknown]) { continue }
            let tok = v.textBytes(Int(id))
            let n = tok.count
            var out: [Fragment] = []
            out.reserveCapacity(fragments.count + 2)
            for f in fragments {
                guard case .raw(var start, let end) = f else { out.append(f); continue }
                while true {
                    guard let match = find(tok, in: text, from: start, to: end) else {
                        out.append(.raw(start: start, end: end))
                        break
                    }
                    if match > start {
                        var leftEnd = match
                        if attr.contains(.lstrip) {
                            while leftEnd > start && Self.isSpace(text[leftEnd - 1]) { leftEnd -= 1 }
                        }
                        if leftEnd > start { out.append(.raw(start: start, end: leftEnd)) }
                    }
                    out.append(.token(id))
                    var rightStart = match + n
                    if rightStart < end {
                        if attr.contains(.rstrip) {
                            while rightStart < end && Self.isSpace(text[rightStart]) { rightStart += 1 }
                        }
                        if rightStart >= end { break }
                        start = rightStart
                    } else {
                        break
                    }
                }
            }
            fragments = out
        }
        return fragments
    }

    private func find(_ needle: UnsafeBufferPointer<UInt8>, in text: UnsafeBufferPointer<UInt8>, from: Int, to: Int) -> Int? {
        let n = needle.count
        guard n > 0, to - from >= n else { return nil }
        let first = needle[0]
        var i = from
        while i <= to - n {
            if text[i] == first {
                var k = 1
                while k < n && text[i + k] == needle[k] { k += 1 }
                if k == n { return i }
            }
            i += 1
        }
        return nil
    }
}
