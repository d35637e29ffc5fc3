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
        /// Its events settled so far (`settle(lines:)`), and whether it was answered.
        var settled = 0
        var answered = false

        var result: IngestResult {
            IngestResult(status: .done, accepted: last - first + 1 - rejected.count,
                         rejected: rejected.sorted { $0.line < $1.line }.map { ($0.line - first + 1, $0.reason) },
                         deadLettered: deadLettered)
        }
    }

    private struct State {
        var waiting: [IngestChunk] = []  // offered, not taken yet (FIFO from `head`)
        var head = 0
        var headTaken = 0                // events of waiting[head] already taken
        var waitingCount = 0             // events offered, not taken yet
        var sleeping = false             // the run's thread waits for an offer (wake it)
        var nextLine = 1                 // the number the next offered event gets
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
    package func offer(_ events: IngestChunk, _ done: CheckedContinuation<IngestResult, Never>) {
        let (refusal, wake): (String?, Bool) = state.withLock { s in
            if let why = s.closedWhy { return (why, false) }
            // A stop signal is seen here at once, even while the run is busy in a stage
            // (it only looks between events).
            if !s.accepting || sl_stop_signal() != 0 { return ("the server is stopping", false) }
            if s.waitingCount + events.count > capacity {
                return ("the queue is full (\(s.waitingCount) events wait, --queue \(capacity))", false)
            }
            let first = s.nextLine
            s.nextLine += events.count
            s.waiting.append(events)
            s.waitingCount += events.count
            s.tickets.append(Ticket(first: first, last: first + events.count - 1, continuation: done))
            // A thread that is not waiting looks at the queue before it waits: no system
            // call for it (most offers, under load).
            let wake = s.sleeping
            s.sleeping = false
            return (nil, wake)
        }
        if let refusal {
            done.resume(returning: IngestResult(status: .refused(refusal)))
            return
        }
        if wake { pipe.wake() }
    }

    /// Stages open and not stopping (`/readyz`).
    package var isReady: Bool { state.withLock { $0.started && $0.accepting && $0.closedWhy == nil } && sl_stop_signal() == 0 }
    /// Events waiting to be taken (a gauge for `/metrics`).
    package var depth: Int { state.withLock { $0.waitingCount } }

    // MARK: - The run's side (IngestFeed)

    package func next(deadline: UInt64?, wake: Int32, max: Int) -> IngestNext {
        while true {
            let waits = deadline.map { $0 > sl_monotonic_ns() } ?? true
            let taken: IngestNext? = state.withLock { s in
                s.started = true
                if s.waitingCount > 0 { return .lines(first: s.takenUpTo + 1, Self.take(&s, Swift.max(1, max))) }
                if s.closedWhy != nil { return .end }
                s.sleeping = waits
                return nil
            }
            if let taken { return taken }
            if !waits { return .idle }
            let woken = pipe.wait(until: deadline, also: wake)
            pipe.drain()
            if !woken || wake >= 0 || sl_stop_signal() != 0 {
                // The deadline, a stop, or the caller's own descriptor (it has something to
                // do): one more look at the queue, then idle.
                let empty = state.withLock { s in
                    s.sleeping = false
                    return s.waitingCount == 0
                }
                if empty { return .idle }
            }
        }
    }

    /// Takes up to `max` events off the front: whole requests as they are. A request is cut
    /// only when it comes first and does not fit: the part that fits is a chunk of its own
    /// (sharing the body), and the rest comes first in the next take, marked `continues`.
    /// So a request that fits in a take is never split between takes (with workers, each
    /// take's lines for a worker are one batch, and its output is written together).
    private static func take(_ s: inout State, _ max: Int) -> [IngestChunk] {
        var out: [IngestChunk] = []
        var n = 0
        while n < max, s.head < s.waiting.count {
            let chunk = s.waiting[s.head]
            let left = chunk.count - s.headTaken
            if n > 0, left > max - n { break }  // it waits for a take of its own
            let k = Swift.min(max - n, left)
            if s.headTaken == 0, k == chunk.count {
                out.append(chunk)
            } else {
                out.append(IngestChunk(bytes: chunk.bytes, ranges: Array(chunk.ranges[s.headTaken..<(s.headTaken + k)]),
                                       continues: s.headTaken > 0))
            }
            n += k
            s.headTaken += k
            if s.headTaken == chunk.count {
                s.waiting[s.head] = IngestChunk(bytes: [], ranges: [])  // its body goes now
                s.head += 1
                s.headTaken = 0
            }
        }
        // The taken chunks leave the array now and then, not one removeFirst each.
        if s.head == s.waiting.count {
            s.waiting.removeAll(keepingCapacity: true)
            s.head = 0
        } else if s.head >= 64, s.head * 2 >= s.waiting.count {
            s.waiting.removeFirst(s.head)
            s.head = 0
        }
        s.waitingCount -= n
        s.takenUpTo += n
        return out
    }

    package func settle(upTo line: Int) {
        let done: [(CheckedContinuation<IngestResult, Never>, IngestResult)] = state.withLock { s in
            // The settled tickets are a prefix (tickets are in event order): taken off at
            // once, not one removeFirst each (thousands of one-event requests may wait).
            let n = s.tickets.prefix { $0.last <= line }.count
            let settled = s.tickets.prefix(n).filter { !$0.answered }.map { ($0.continuation, $0.result) }
            s.tickets.removeFirst(n)
            return settled
        }
        for (c, r) in done { c.resume(returning: r) }
    }

    package func settle(lines: ClosedRange<Int>) {
        let done: [(CheckedContinuation<IngestResult, Never>, IngestResult)] = state.withLock { s in
            var done: [(CheckedContinuation<IngestResult, Never>, IngestResult)] = []
            guard var i = Self.ticket(holding: lines.lowerBound, in: s.tickets) else { return done }
            while i < s.tickets.count, s.tickets[i].first <= lines.upperBound {
                let t = s.tickets[i]
                s.tickets[i].settled += min(t.last, lines.upperBound) - max(t.first, lines.lowerBound) + 1
                if s.tickets[i].settled >= t.last - t.first + 1, !t.answered {
                    s.tickets[i].answered = true
                    done.append((t.continuation, t.result))
                }
                i += 1
            }
            // The answered tickets at the front leave (the others wait for their turn).
            let n = s.tickets.prefix { $0.answered }.count
            if n > 0 { s.tickets.removeFirst(n) }
            return done
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
            let left = s.tickets.filter { !$0.answered }.map(\.continuation)
            s.tickets = []
            s.waiting = []
            s.head = 0
            s.headTaken = 0
            s.waitingCount = 0
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
