import ScopeLua

/// A `POST /events` body as the events it holds, one JSON text each, for the run to
/// decode as it decodes input lines: JSON lines (one event per line, blank lines
/// skipped), a JSON array (one event per element), or one object (which may span lines).
/// Nothing is decoded here: a line that is not JSON, or an element that is not an object,
/// is the run's to reject, by its number in the request. Only an array whose elements
/// cannot be told apart (unbalanced brackets, an unterminated string) is refused whole.
enum EventBody {
    enum Failure: Error, Equatable {
        case badArray(String)
        case empty
    }

    /// The body's events, in place (the body is not copied: each event is a range of it),
    /// except a pretty-printed object, joined into one line.
    static func split(_ body: [UInt8]) -> Result<IngestChunk, Failure> {
        guard let start = body.firstIndex(where: { !isSpace($0) }) else { return .failure(.empty) }
        if body[start] == UInt8(ascii: "[") { return elements(of: body, from: start) }
        let lines = lineRanges(body)
        // One object over several lines (pretty-printed): its first line is not a whole
        // value. Newlines are only whitespace between JSON tokens (a string cannot hold
        // one raw), so the object joins into one line.
        if lines.count > 1, let first = lines.first, valueEnd(body[first], from: first.lowerBound) == nil {
            let joined = Array(lines.map { body[$0] }.joined(separator: [UInt8(ascii: " ")]))
            return .success(IngestChunk(bytes: joined, ranges: [0..<joined.count]))
        }
        return lines.isEmpty ? .failure(.empty) : .success(IngestChunk(bytes: body, ranges: lines))
    }

    /// Each line that is not blank, without its line end and trailing blanks (a CR).
    private static func lineRanges(_ body: [UInt8]) -> [Range<Int>] {
        var lines: [Range<Int>] = []
        body.withUnsafeBufferPointer { b in
            var start = 0
            while start < b.count {
                var end = start
                while end < b.count, b[end] != UInt8(ascii: "\n") { end += 1 }
                var last = end
                while last > start, isSpace(b[last - 1]) { last -= 1 }
                if last > start { lines.append(start..<last) }  // trailing blanks gone: blank means empty
                start = end + 1
            }
        }
        return lines
    }

    /// The elements of the array that starts at `start`, each as its range.
    private static func elements(of body: [UInt8], from start: Int) -> Result<IngestChunk, Failure> {
        var out: [Range<Int>] = []
        var i = body.index(after: start)
        skipSpace(body, &i)
        if i < body.endIndex, body[i] == UInt8(ascii: "]") {
            i += 1
        } else {
            while true {
                skipSpace(body, &i)
                guard i < body.endIndex, let end = valueEnd(body[...], from: i) else {
                    return .failure(.badArray("the array's element \(out.count + 1) does not end (unbalanced brackets or an unterminated string)"))
                }
                out.append(i..<end)
                i = end
                skipSpace(body, &i)
                guard i < body.endIndex else { return .failure(.badArray("the array does not end with ']'")) }
                if body[i] == UInt8(ascii: "]") {
                    i += 1
                    break
                }
                guard body[i] == UInt8(ascii: ",") else {
                    return .failure(.badArray("expected ',' or ']' after the array's element \(out.count)"))
                }
                i += 1
            }
        }
        skipSpace(body, &i)
        guard i == body.endIndex else { return .failure(.badArray("something follows the array")) }
        return out.isEmpty ? .failure(.empty) : .success(IngestChunk(bytes: body, ranges: out))
    }

    /// Where the JSON value starting at `i` ends (one past it), by brackets and strings
    /// only (the run checks the rest); nil when it does not end in `text`. A scalar
    /// ends at the next comma, bracket or whitespace.
    static func valueEnd(_ text: ArraySlice<UInt8>, from i: Int) -> Int? {
        var depth = 0
        var inString = false
        var escaped = false
        var j = i
        while j < text.endIndex {
            let c = text[j]
            if inString {
                if escaped { escaped = false } else if c == UInt8(ascii: "\\") { escaped = true } else if c == UInt8(ascii: "\"") {
                    inString = false
                    if depth == 0 { return j + 1 }
                }
            } else {
                switch c {
                case UInt8(ascii: "\""): inString = true
                case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                case UInt8(ascii: "}"), UInt8(ascii: "]"):
                    if depth == 0 { return j }  // a scalar ended by its container
                    depth -= 1
                    if depth == 0 { return j + 1 }
                case UInt8(ascii: ","):
                    if depth == 0 { return j }
                default:
                    if depth == 0, isSpace(c), j > i { return j }
                }
            }
            j += 1
        }
        return depth == 0 && !inString && j > i ? j : nil
    }

    private static func skipSpace(_ body: [UInt8], _ i: inout Int) {
        while i < body.endIndex, isSpace(body[i]) { i += 1 }
    }

    private static func isSpace(_ c: UInt8) -> Bool {
        c == 32 || c == 9 || c == 10 || c == 13
    }
}
