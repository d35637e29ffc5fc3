import CScopeLua
import ScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// What became of one request's events, once they are durable (or why not).
package struct IngestResult: Sendable, Equatable {
    package enum Status: Sendable, Equatable {
        /// Every event passed the pipeline and what was written is durable.
        case done
        /// Not taken: the queue is full (backpressure) or the server is stopping.
        case refused(String)
        /// Taken, but the run ended before they were settled (an abort, a forced stop).
        case failed(String)
    }
    package var status: Status
    package var accepted = 0
    /// (the event's number in the request, from 1; why)
    package var rejected: [(line: Int, reason: String)] = []
    package var deadLettered = 0

    package static func == (a: IngestResult, b: IngestResult) -> Bool {
        a.status == b.status && a.accepted == b.accepted && a.deadLettered == b.deadLettered
            && a.rejected.map(\.line) == b.rejected.map(\.line) && a.rejected.map(\.reason) == b.rejected.map(\.reason)
    }
}

/// The bounded queue between the HTTP server's threads and the run's thread (docs/
/// ARCHITECTURE.md, "Serving"). A request's events are numbered as they are offered
/// (numbers run on across requests, in the order the run takes them), wait here until the
/// run takes them, and the request's answer waits until the run settles its last event:
/// a barrier made it durable. At most `capacity` events wait to be taken: an offer beyond
/// that is refused (503), so memory stays bounded however fast requests come.
package final class IngestQueue: IngestFeed, @unchecked Sendable {
    package let name: String
    package let capacity: Int

    private struct Ticket {
        var first: Int
        var last: Int
        var continuation: CheckedContinuation<IngestResult, Never>
        var rejected: [(line: Int, reason: String)] = []
        var deadLettered = 0
    }

    private struct State {
        var waiting: [[UInt8]] = []  // offered, not taken yet (FIFO)
        var nextLine = 1             // the number the next offered event gets
        var takenUpTo = 0            // the last number handed to the run
        var tickets: [Ticket] = []   // unanswered, by number
        var accepting = true
        var closedWhy: String?
        var started = false
    }

    private let state = Protected(State())
    /// Woken when events are offered; the run's thread waits on it (with the stop pipe).
    private let pipe: WakePipe

    /// Nil when the wake pipe cannot be made.
    package init?(name: String, capacity: Int) {
        guard let pipe = WakePipe() else { return nil }
        self.name = name
        self.capacity = max(1, capacity)
        self.pipe = pipe
    }

    // MARK: - The server's side

    /// Offers a request's events; `done` gets the answer (at once when refused).
    package func offer(_ events: [[UInt8]], _ done: CheckedContinuation<IngestResult, Never>) {
        let refusal: String? = state.withLock { s in
            if let why = s.closedWhy { return why }
            // A stop signal is seen here at once, even while the run is busy in a stage
            // (it only looks between events).
            if !s.accepting || sl_stop_signal() != 0 { return "the server is stopping" }
            if s.waiting.count + events.count > capacity {
                return "the queue is full (\(s.waiting.count) events wait, --queue \(capacity))"
            }
            let first = s.nextLine
            s.nextLine += events.count
            s.waiting += events
            s.tickets.append(Ticket(first: first, last: first + events.count - 1, continuation: done))
            return nil
        }
        if let refusal {
            done.resume(returning: IngestResult(status: .refused(refusal)))
            return
        }
        pipe.wake()
    }

    /// Stages open and not stopping (`/readyz`).
    package var isReady: Bool { state.withLock { $0.started && $0.accepting && $0.closedWhy == nil } && sl_stop_signal() == 0 }
    /// Events waiting to be taken (a gauge for `/metrics`).
    package var depth: Int { state.withLock { $0.waiting.count } }

    // MARK: - The run's side (IngestFeed)

    package func next(deadline: UInt64?, wake: Int32, max: Int) -> IngestNext {
        while true {
            let taken: IngestNext? = state.withLock { s in
                s.started = true
                if !s.waiting.isEmpty {
                    let n = Swift.max(1, Swift.min(max, s.waiting.count))
                    let lines = Array(s.waiting.prefix(n))
                    s.waiting.removeFirst(n)
                    let first = s.takenUpTo + 1
                    s.takenUpTo += n
                    return .lines(first: first, lines)
                }
                return s.closedWhy != nil ? .end : nil
            }
            if let taken { return taken }
            if let deadline, deadline <= sl_monotonic_ns() { return .idle }
            let woken = pipe.wait(until: deadline, also: wake)
            pipe.drain()
            if !woken || wake >= 0 || sl_stop_signal() != 0 {
                // The deadline, a stop, or the caller's own descriptor (it has something to
                // do): one more look at the queue, then idle.
                if state.withLock({ $0.waiting.isEmpty }) { return .idle }
            }
        }
    }

    package func settle(upTo line: Int) {
        let done: [(CheckedContinuation<IngestResult, Never>, IngestResult)] = state.withLock { s in
            // The settled tickets are a prefix (tickets are in event order): taken off at
            // once, not one removeFirst each (thousands of one-event requests may wait).
            let n = s.tickets.prefix { $0.last <= line }.count
            let settled = s.tickets.prefix(n).map { t in
                (t.continuation, IngestResult(status: .done, accepted: t.last - t.first + 1 - t.rejected.count,
                                              rejected: t.rejected.map { ($0.line - t.first + 1, $0.reason) },
                                              deadLettered: t.deadLettered))
            }
            s.tickets.removeFirst(n)
            return settled
        }
        for (c, r) in done { c.resume(returning: r) }
    }

    package func rejected(line: Int, reason: String) {
        state.withLock { s in
            if let i = Self.ticket(holding: line, in: s.tickets) { s.tickets[i].rejected.append((line, reason)) }
        }
    }

    package func deadLettered(line: Int) {
        state.withLock { s in
            if let i = Self.ticket(holding: line, in: s.tickets) { s.tickets[i].deadLettered += 1 }
        }
    }

    /// The index of the ticket whose events include `line` (tickets are in event order,
    /// their ranges adjacent): a binary search.
    private static func ticket(holding line: Int, in tickets: [Ticket]) -> Int? {
        var lo = 0, hi = tickets.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if tickets[mid].last < line { lo = mid + 1 } else { hi = mid }
        }
        return lo < tickets.count && tickets[lo].first <= line ? lo : nil
    }

    package func stopAccepting() {
        state.withLock { $0.accepting = false }
    }

    package func abandon(_ why: String) {
        let left: [CheckedContinuation<IngestResult, Never>] = state.withLock { s in
            if s.closedWhy == nil { s.closedWhy = "the server is stopping" }
            let left = s.tickets.map(\.continuation)
            s.tickets = []
            s.waiting = []
            return left
        }
        for c in left { c.resume(returning: IngestResult(status: .failed(why))) }
    }

    /// No more requests (the server is going away): what is offered from now on is
    /// refused, and the run's `next` ends once the queue is empty.
    package func close(_ why: String) {
        state.withLock { s in
            s.accepting = false
            if s.closedWhy == nil { s.closedWhy = why }
        }
        pipe.wake()
    }
}
