import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaServe

/// The queue between the HTTP threads and the run (IngestQueue): how requests' events
/// are numbered and handed out, and when each request is answered.
@Suite(.timeLimit(testTimeLimit))
struct IngestQueueTests {
    static func chunk(_ lines: [String]) -> IngestChunk {
        guard case .success(let c) = EventBody.split(Array(lines.joined(separator: "\n").utf8)) else {
            return IngestChunk(bytes: [], ranges: [])
        }
        return c
    }

    /// Offers `lines` as one request; the answer, once there is one, in `answers[key]`.
    static func offer(_ q: IngestQueue, _ lines: [String], key: String, into answers: Answers) {
        let c = chunk(lines)
        Task { answers.set(key, await withCheckedContinuation { q.offer(c, $0) }) }
    }

    final class Answers: @unchecked Sendable {
        private let lock = NSLock()
        private var results: [String: IngestResult] = [:]
        func set(_ key: String, _ r: IngestResult) { lock.lock(); results[key] = r; lock.unlock() }
        subscript(_ key: String) -> IngestResult? { lock.lock(); defer { lock.unlock() }; return results[key] }
    }

    /// Waits (without holding a thread: the offers' tasks need the pool) until `condition`.
    static func eventually(_ condition: () -> Bool) async -> Bool {
        for _ in 0..<3000 {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// What `next` hands out, as (first number, each line's text).
    static func take(_ q: IngestQueue, max: Int) -> (Int, [String])? {
        guard case .lines(let first, let chunks) = q.next(deadline: 0, wake: -1, max: max) else { return nil }
        return (first, chunks.flatMap { $0.lines.map { String(decoding: $0, as: UTF8.self) } })
    }

    /// What `next` hands out, chunk by chunk: each one's lines and whether it `continues`
    /// a request cut by the take before.
    static func takeChunks(_ q: IngestQueue, max: Int) -> (Int, [([String], Bool)])? {
        guard case .lines(let first, let chunks) = q.next(deadline: 0, wake: -1, max: max) else { return nil }
        return (first, chunks.map { ($0.lines.map { String(decoding: $0, as: UTF8.self) }, $0.continues) })
    }

    /// Requests are numbered on across each other and handed out at most `max` at a time,
    /// whole: one that does not fit after others waits for the next take, and only one
    /// that does not fit alone is cut, its rest marked as continuing it (with workers it
    /// goes where its beginning went). Nothing waiting is `.idle` at once with a past
    /// deadline.
    @Test func linesAreHandedOutInOrderAtMostMaxAtATime() async throws {
        let q = try #require(IngestQueue(name: "test", capacity: 100))
        let answers = Answers()
        Self.offer(q, ["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"], key: "a", into: answers)
        #expect(await Self.eventually { q.depth == 3 })
        Self.offer(q, ["{\"b\":1}", "{\"b\":2}"], key: "b", into: answers)
        #expect(await Self.eventually { q.depth == 5 })
        Self.offer(q, (1...5).map { "{\"c\":\($0)}" }, key: "c", into: answers)
        #expect(await Self.eventually { q.depth == 10 })
        let first = Self.takeChunks(q, max: 4)  // a; b does not fit in the one place left
        #expect(first?.0 == 1 && first?.1.map(\.0) == [["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]] && first?.1.map(\.1) == [false])
        let second = Self.takeChunks(q, max: 4)  // b; c does not fit in the two left
        #expect(second?.0 == 4 && second?.1.map(\.0) == [["{\"b\":1}", "{\"b\":2}"]])
        let third = Self.takeChunks(q, max: 4)  // c alone does not fit: cut
        #expect(third?.0 == 6 && third?.1.map(\.0) == [(1...4).map { "{\"c\":\($0)}" }] && third?.1.map(\.1) == [false])
        let fourth = Self.takeChunks(q, max: 4)  // the rest of c, then nothing
        #expect(fourth?.0 == 10 && fourth?.1.map(\.0) == [["{\"c\":5}"]] && fourth?.1.map(\.1) == [true])
        if case .idle = q.next(deadline: 0, wake: -1, max: 10) {} else { Issue.record("expected .idle") }
        #expect(q.depth == 0)
        q.abandon("the test ended")
        #expect(await Self.eventually { answers["a"] != nil && answers["b"] != nil && answers["c"] != nil })
        #expect(answers["a"]?.status == .failed("the test ended"))
    }

    /// Settled in pieces and out of order (each worker makes its own lines durable): a
    /// request is answered once every one of its lines is, not before, whatever the
    /// order; its rejects in line order however they were reported.
    @Test func aRequestIsAnsweredOnceAllItsLinesAreSettled() async throws {
        let q = try #require(IngestQueue(name: "test", capacity: 100))
        let answers = Answers()
        Self.offer(q, ["{}", "{}", "{}", "{}"], key: "a", into: answers)   // lines 1-4
        #expect(await Self.eventually { q.depth == 4 })
        Self.offer(q, ["{}", "{}"], key: "b", into: answers)               // lines 5-6
        #expect(await Self.eventually { q.depth == 6 })
        #expect(Self.take(q, max: 10)?.0 == 1)
        q.rejected(line: 4, reason: "four")
        q.rejected(line: 2, reason: "two")
        q.deadLettered(line: 3)
        q.settle(lines: 5...6)  // b, while a's lines are not all settled
        #expect(await Self.eventually { answers["b"] != nil })
        #expect(answers["b"] == IngestResult(status: .done, accepted: 2))
        q.settle(lines: 3...4)
        q.settle(lines: 1...1)
        #expect(answers["a"] == nil)
        q.settle(lines: 2...2)
        #expect(await Self.eventually { answers["a"] != nil })
        #expect(answers["a"] == IngestResult(status: .done, accepted: 2, rejected: [(2, "two"), (4, "four")], deadLettered: 1))
        // Answered once: a later settle of everything, or the end, does not answer again.
        q.settle(upTo: 6)
        q.abandon("the test ended")
        #expect(answers["a"]?.status == .done && answers["b"]?.status == .done)
    }
}
