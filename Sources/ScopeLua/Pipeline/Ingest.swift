import CLua
import CScopeLua

/// Events another thread hands a run: the HTTP server of `scopelua serve` (docs/
/// ARCHITECTURE.md, "Serving"). The run's thread takes lines from it; the feed learns,
/// line by line, what became of them (rejected, dead-lettered) and when they are durable
/// (a barrier committed them), which is when a request's answer may go out.
package protocol IngestFeed: AnyObject, Sendable {
    /// For messages: `HTTP (127.0.0.1:8080)`.
    var name: String { get }
    /// The next lines (at most `max`), numbered from 1 in the order handed out (`first`
    /// is the number of the first): waits until there are some, until `deadline`
    /// (monotonic ns; nil: no limit), a stop signal (`sl_stop_fd`) or `wake` (a
    /// descriptor, -1: none) becoming readable, which answer `.idle`; `.end` once the
    /// feed is closed and empty.
    func next(deadline: UInt64?, wake: Int32, max: Int) -> IngestNext
    /// Every line up to `line` has left the pipeline and what it wrote is durable.
    func settle(upTo line: Int)
    /// Lines `lines` left the pipeline and what they wrote is durable (lines before them
    /// may not be yet: with workers, each worker's lines are made durable by its own
    /// barriers).
    func settle(lines: ClosedRange<Int>)
    /// Line `line` was rejected (not JSON, not an object, too long) for `reason`.
    func rejected(line: Int, reason: String)
    /// An event of line `line` was dead-lettered (its record is written, not yet durable).
    func deadLettered(line: Int)
    /// A graceful stop began: the feed takes nothing new (what it holds is still handed
    /// out, and answered once settled).
    func stopAccepting()
    /// The run is over: what was not settled never will be, for `why`.
    func abandon(_ why: String)
}

package enum IngestNext {
    case idle
    case end
    /// Lines numbered from `first` on, in the order of the chunks and their ranges.
    case lines(first: Int, [IngestChunk])
}

/// Lines one after another in one buffer (a request's body, as received): line `i` is
/// `bytes[ranges[i]]`. Why not an array per line: cutting a body of a hundred events
/// into a hundred arrays cost the HTTP threads more than parsing the request did.
package struct IngestChunk: Sendable {
    package var bytes: [UInt8]
    package var ranges: [Range<Int>]
    /// Its first line is not its request's first: the rest of a request that a take cut
    /// (with workers, it goes where the part before it went).
    package var continues: Bool

    package init(bytes: [UInt8], ranges: [Range<Int>], continues: Bool = false) {
        self.bytes = bytes
        self.ranges = ranges
        self.continues = continues
    }

    package var count: Int { ranges.count }

    /// Each line's bytes (for tests and messages; the run reads them in place).
    package var lines: [ArraySlice<UInt8>] { ranges.map { bytes[$0] } }

    /// Calls `body` with each line's bytes in place, and its number (`first` for the
    /// first); stops at the first false. False when one did.
    package func forEachLine(first: Int, _ body: (UnsafeBufferPointer<UInt8>, Int) -> Bool) -> Bool {
        bytes.withUnsafeBufferPointer { all in
            for (k, r) in ranges.enumerated() where !body(UnsafeBufferPointer(rebasing: all[r]), first + k) {
                return false
            }
            return true
        }
    }
}

/// The run's view of an ingest feed: where it stands (the last line handed out), and
/// the acknowledgement a barrier gives it.
final class IngestSource: EventSource {
    let feed: any IngestFeed
    /// The last line handed out, and the last one settled.
    var handedOut = 0
    private var settled = 0

    init(_ feed: any IngestFeed) {
        self.feed = feed
    }

    var name: String { feed.name }
    var position: SourcePosition { SourcePosition(offset: 0, line: handedOut) }
    var unsettled: Bool { handedOut > settled }
    func identity() -> SourceIdentity? { nil }
    func resume(from position: SourcePosition) -> String? { "an HTTP input cannot resume" }

    func ack(upTo position: SourcePosition) -> String? {
        guard position.line > settled else { return nil }
        settled = position.line
        feed.settle(upTo: settled)
        return nil
    }
}

extension PipelineRun {
    /// At most this many lines are taken from an ingest feed at once (between two looks at
    /// timers, barriers, the stop and the workers' messages).
    static let ingestBatch = 256

    /// The feed to tell of rejects and dead letters by line: the run's own, or, in a
    /// worker, the coordinator's.
    var ingestFeed: (any IngestFeed)? {
        if let ingestSource { return ingestSource.feed }
        if case .channel(let link) = options.input { return link.ingest }
        return nil
    }

    /// The feed loop over an ingest feed (as `feedStream` over a Redis stream): lines are
    /// taken as input lines are, numbered as the feed numbers them; when none is waiting
    /// and some are not settled yet, a barrier makes them durable and settles them (what
    /// arrives meanwhile waits for the next one: a barrier serves every request that came
    /// before it). A graceful stop takes nothing new but finishes what the feed holds.
    /// False when the run must stop.
    func feedIngest(_ L: LuaState, _ source: IngestSource) -> Bool {
        let codec = rt.json
        var stopping = false
        while true {
            if sl_stop_signal() != 0, !stopping {
                stopping = true
                source.feed.stopAccepting()
            }
            if !stopping, !fireTimers(L) { return false }
            if !flushIfDue() { return false }
            if barrierDue, !barrier(L, .checkpoint) { return false }
            showProgress()
            // Lines waiting to be settled: no waiting, so that a pause in what arrives is
            // a barrier at once (a group commit: it answers every request before it).
            switch source.feed.next(deadline: stopping || source.unsettled ? 0 : nextWakeUp(), wake: -1, max: Self.ingestBatch) {
            case .idle:
                if stopping { return true }  // all it held was taken; the final barrier settles it
                if source.unsettled, !barrier(L, .checkpoint) { return false }
                if !flushBeforeWaiting() { return false }
            case .end:
                return true
            case .lines(var first, let chunks):
                for chunk in chunks {
                    let ok = chunk.forEachLine(first: first) { line, number in
                        source.handedOut = number
                        guard takeLine(L, line, line: number, codec: codec) else { return false }
                        return !barrierDue || barrier(L, .checkpoint)
                    }
                    guard ok else { return false }
                    first += chunk.count
                }
            }
        }
    }
}
