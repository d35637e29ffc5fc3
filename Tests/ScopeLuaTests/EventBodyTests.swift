import Testing
@testable import ScopeLuaServe

/// How a `POST /events` body is cut into events (EventBody.split): without decoding, so
/// that a bad event is the run's to reject by its number, and only an array whose
/// elements cannot be told apart is refused whole.
@Suite(.timeLimit(testTimeLimit))
struct EventBodyTests {
    static func split(_ text: String) -> [String]? {
        guard case .success(let events) = EventBody.split(Array(text.utf8)) else { return nil }
        return events.lines.map { String(decoding: $0, as: UTF8.self) }
    }

    static func failure(_ text: String) -> EventBody.Failure? {
        guard case .failure(let f) = EventBody.split(Array(text.utf8)) else { return nil }
        return f
    }

    @Test func jsonLinesKeepEveryNonBlankLineAsItIs() {
        #expect(Self.split("{\"a\":1}\n\n  \n{\"b\":2}\r\nnot json\n") == ["{\"a\":1}", "{\"b\":2}", "not json"])
        #expect(Self.split("{\"a\":1}") == ["{\"a\":1}"])
        // A first line that is a whole value (even a bad one) means JSON lines.
        #expect(Self.split("oops\n{\"a\":") == ["oops", "{\"a\":"])
    }

    @Test func oneObjectOverSeveralLinesIsOneEvent() {
        #expect(Self.split("{\n  \"a\": \"x\",\n  \"b\": [1,\n 2]\n}\n") == ["{   \"a\": \"x\",   \"b\": [1,  2] }"])
    }

    @Test func anArraysElementsAreTheEvents() {
        #expect(Self.split(" [ {\"a\":\"]\"}, {\"b\":{\"c\":[1,2]}} ,5,\"s,t\" ] ") == ["{\"a\":\"]\"}", "{\"b\":{\"c\":[1,2]}}", "5", "\"s,t\""])
        #expect(Self.split("[{\"a\":\"\\\"}\"}]") == ["{\"a\":\"\\\"}\"}"])
    }

    @Test func whatCannotBeCutIsRefusedWhole() {
        #expect(Self.failure("[{\"a\":1}, {\"a\":") == .badArray("the array's element 2 does not end (unbalanced brackets or an unterminated string)"))
        #expect(Self.failure("[{\"a\":1} {\"b\":2}]") == .badArray("expected ',' or ']' after the array's element 1"))
        #expect(Self.failure("[{\"a\":1}] x") == .badArray("something follows the array"))
        #expect(Self.failure("[{\"a\":1}") == .badArray("the array does not end with ']'"))
        #expect(Self.failure("[]") == .empty)
        #expect(Self.failure(" \n\t") == .empty)
        #expect(Self.failure("") == .empty)
    }
}
