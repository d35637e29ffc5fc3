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

    static func split(_ body: [UInt8]) -> Result<[[UInt8]], Failure> {
        guard let start = body.firstIndex(where: { !isSpace($0) }) else { return .failure(.empty) }
        if body[start] == UInt8(ascii: "[") { return elements(of: body, from: start) }
        let lines = body.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
            .map { line -> ArraySlice<UInt8> in
                var l = line
                while let last = l.last, isSpace(last) { l = l.dropLast() }  // CR, trailing blanks
                return l
            }
            .filter { $0.contains { !isSpace($0) } }
        // One object over several lines (pretty-printed): its first line is not a whole
        // value. Newlines are only whitespace between JSON tokens (a string cannot hold
        // one raw), so the object joins into one line.
        if lines.count > 1, let first = lines.first, valueEnd(first, from: first.startIndex) == nil {
            return .success([Array(lines.joined(separator: [UInt8(ascii: " ")]))])
        }
        return lines.isEmpty ? .failure(.empty) : .success(lines.map { Array($0) })
    }

    /// The elements of the array that starts at `start`, each as its text.
    private static func elements(of body: [UInt8], from start: Int) -> Result<[[UInt8]], Failure> {
        var out: [[UInt8]] = []
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
                out.append(Array(body[i..<end]))
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
        return out.isEmpty ? .failure(.empty) : .success(out)
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
