/// A name read from a file (GGUF metadata key, tensor name, scale-file key or string) as error
/// messages show it: in single quotes, with control characters, quotes, backslashes and U+FFFD (what
/// invalid UTF-8 decodes to) escaped, cut at 48 characters of output with the full length (UTF-8 bytes
/// after decoding) named, so an error, a log line or `health`'s `last_error` never carries file bytes
/// raw or in bulk (README, "Hostile input").
///
/// Example: `quotedName("gemma3\u{1}")` is `'gemma3\u{1}'`; a 200-character name gives its first 48
/// characters, then `…' (200 bytes)`.
public func quotedName(_ s: String) -> String {
    var out = "'"
    var shown = 0
    for scalar in s.unicodeScalars {
        let piece: String
        switch scalar {
        case "'": piece = "\\'"
        case "\\": piece = "\\\\"
        case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar == "\u{FFFD}":
            piece = "\\u{\(String(scalar.value, radix: 16))}"
        default: piece = String(scalar)
        }
        if shown + piece.count > 48 {
            return out + "…' (\(s.utf8.count) bytes)"
        }
        out += piece
        shown += piece.count
    }
    return out + "'"
}
