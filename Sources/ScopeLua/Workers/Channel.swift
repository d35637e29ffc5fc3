import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

// What crosses between the coordinator (the main thread: input, sinks, checkpoint) and
// the workers (each a Lua state on its own thread): plain bytes and counts, never Lua
// values (docs/ARCHITECTURE.md, "Workers").

/// A pthread mutex and condition variable (on the monotonic clock). Why not Foundation:
/// the engine does not link it, and a worker's wait needs a deadline on the clock its
/// timers use.
final class Monitor: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// With the lock held: waits for a signal, or until `deadline` (sl_monotonic_ns).
    func wait(until deadline: UInt64?) {
        guard let deadline else {
            pthread_cond_wait(cond, mutex)
            return
        }
        let now = sl_monotonic_ns()
        guard deadline > now else { return }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let ns = min(deadline - now, 3_600_000_000_000)  // an hour at most per wait
        let total = UInt64(ts.tv_nsec) + ns % 1_000_000_000
        ts.tv_sec += Int(ns / 1_000_000_000) + Int(total / 1_000_000_000)
        ts.tv_nsec = Int(total % 1_000_000_000)
        pthread_cond_timedwait(cond, mutex, &ts)
    }

    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Raw input lines for one worker, in input order: one buffer, and where each line is.
struct WorkBatch: Sendable {
    struct Item: Sendable {
        /// The dispatch sequence number (the reorder window's key) and the input line.
        var seq: Int
        var line: Int
        var start: Int
        var end: Int
        /// A line over the reader's limit: its full length (the bytes are its prefix).
        var tooLong: Int = 0
    }
    var bytes: [UInt8] = []
    var items: [Item] = []
}

/// What the coordinator tells a worker.
enum WorkerOrder: Sendable {
    case batch(WorkBatch)
    /// Every line dispatched before it has left the worker's pipeline: run the barrier
    /// (`reason` .checkpoint), or the final one and wait for `.finish` (.end, .stop).
    /// `lastSeq`: the last line dispatched to any worker (what its flush emits is written
    /// after it); `committing`: the input line the checkpoint commits (ctx.committing).
    case barrier(reason: BarrierReason, lastSeq: Int, committing: Int)
    /// After the final barrier: close the stages (with `uncommitted` as their error when
    /// the final checkpoint did not commit).
    case finish(uncommitted: String?)
    /// Another worker failed: stop between events, close the stages with this error.
    case stop(String)
}

/// One worker's inbox: orders in the order given; the worker waits on it (with its
/// timers' deadline). Not bounded itself: the coordinator's reorder window bounds what
/// is dispatched and not yet done.
final class Inbox: @unchecked Sendable {
    private let monitor = Monitor()
    private var orders: [WorkerOrder] = []
    private var head = 0
    private var stopped: String?

    func send(_ order: WorkerOrder) {
        monitor.locked {
            if case .stop(let why) = order, stopped == nil { stopped = why }
            orders.append(order)
            monitor.broadcast()
        }
    }

    /// Puts an order back at the head of the queue (a crashed worker's unfinished batch,
    /// for the state that replaces it).
    func putBack(_ order: WorkerOrder) {
        monitor.locked {
            if head > 0 {
                head -= 1
                orders[head] = order
            } else {
                orders.insert(order, at: 0)
            }
        }
    }

    /// The next order, or nil at `deadline`. A `.stop` jumps the queue: what waits
    /// behind it is dropped (the coordinator counts it in flight).
    func next(deadline: UInt64?) -> WorkerOrder? {
        monitor.locked {
            while true {
                if let stopped {
                    orders.removeAll()
                    head = 0
                    return .stop(stopped)
                }
                if head < orders.count {
                    let order = orders[head]
                    head += 1
                    if head > 64, head * 2 > orders.count {
                        orders.removeFirst(head)
                        head = 0
                    }
                    return order
                }
                if let deadline, sl_monotonic_ns() >= deadline { return nil }
                monitor.wait(until: deadline)
            }
        }
    }

    /// Whether a stop is waiting (checked between events).
    var stopRequested: Bool { monitor.locked { stopped != nil } }
}

/// What a worker's events produced, for the coordinator to write: encoded output lines
/// and dead-letter records, and which dispatched lines are done.
struct WorkerResults: Sendable {
    enum Kind: UInt8, Sendable { case output, deadLetter, done }
    struct Entry: Sendable {
        var kind: Kind
        /// For output and dead letters of an event: its dispatch sequence number; of a
        /// timer or a flush: the sequence number they come after (-1: at once).
        var seq: Int
        /// For output and dead letters: whether `seq` is the event's own (false: after it).
        var own: Bool
        var start: Int
        var end: Int
    }
    var bytes: [UInt8] = []
    var entries: [Entry] = []
    var isEmpty: Bool { entries.isEmpty }
}

/// A stage's numbers, as a worker hands them over.
struct StageCounts: Sendable {
    var calls = 0, errors = 0, skipped = 0, deadLettered = 0, retried = 0
    var backoffNanos: UInt64 = 0
    var breaches = Breaches()
    var notices = PipelineRun.Notices()
    /// The latency histogram's raw counters (at the end of the worker only).
    var histogram: HistogramSnapshot?
}

/// A worker's counts (at a barrier, and at its end).
struct WorkerCounts: Sendable {
    var read = 0, rejected = 0, retried = 0, replayed = 0
    var original = PipelineRun.Outcomes()
    var fanout = PipelineRun.Outcomes()
    var fanoutCreated = 0
    var rejectNotices = PipelineRun.Notices()
    var stages: [StageCounts] = []
}

/// How a worker ended.
struct WorkerEnd: Sendable {
    var counts: WorkerCounts
    /// nil: finished; else why not (an abort's message, a failure to start).
    var failure: String?
    var releaseFailures: [String] = []
    var resources = ResourceCountsSnapshot()
    /// Time spent in stage calls (ns).
    var busyNanos: UInt64 = 0
    /// How often its state crashed and was replaced.
    var restarts = 0
}

struct ResourceCountsSnapshot: Sendable {
    var acquired = 0, released = 0, leaked = 0, releaseErrors = 0
}

/// A pipe that makes a poll() on another thread return: written when there is something
/// to take, drained by the taker. Non-blocking both ways (a full pipe means a wake-up is
/// already pending), closed on exec.
package final class WakePipe: @unchecked Sendable {
    private var fds: [Int32] = [-1, -1]
    /// The end to poll for POLLIN.
    package var fd: Int32 { fds[0] }

    package init?() {
        guard Glibc.pipe(&fds) == 0 else { return nil }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
    }

    deinit {
        for fd in fds where fd >= 0 { Glibc.close(fd) }
    }

    package func wake() {
        var c: UInt8 = 1
        _ = write(fds[1], &c, 1)
    }

    package func drain() {
        var bytes = [UInt8](repeating: 0, count: 64)
        while read(fds[0], &bytes, bytes.count) > 0 {}
    }

    /// Waits until the pipe is woken, a stop signal arrives (the stop pipe), `also` (a
    /// descriptor, -1: none) is readable, or `deadline` (monotonic ns; nil: no limit)
    /// passes. False when the deadline passed first.
    package func wait(until deadline: UInt64?, also: Int32 = -1) -> Bool {
        let stopFD = sl_stop_fd()
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: also, events: Int16(POLLIN), revents: 0),   // a negative descriptor is ignored
                   pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
        var timeout: Int32 = -1
        if let deadline {
            let now = sl_monotonic_ns()
            let ns = deadline <= now ? 0 : deadline - now
            timeout = Int32(min(UInt64(Int32.max), ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1)))
        }
        return poll(&fds, 3, timeout) != 0
    }
}

/// What workers tell the coordinator, in one queue (so a worker's results always come
/// before its barrier acknowledgement). Posting wakes the coordinator's poll through a
/// pipe (the coordinator waits on the input, the stop and this at once).
final class Outbox: @unchecked Sendable {
    enum Message: Sendable {
        case results(worker: Int, WorkerResults)
        /// The worker ran the barrier; `failure`: nil when every flush succeeded and
        /// nothing is in flight, else why not (the worker's abort, so the coordinator
        /// can say it even when this arrives before the worker's `failed`); its counts then.
        case barrierDone(worker: Int, failure: String?, counts: WorkerCounts)
        /// The worker stopped early (its stage aborted): the run stops.
        case failed(worker: Int, message: String)
        case ended(worker: Int, WorkerEnd)
    }

    private let monitor = Monitor()
    private var messages: [Message] = []
    private let pipe: WakePipe
    /// Readable while messages wait (for poll).
    var fd: Int32 { pipe.fd }

    init?() {
        guard let pipe = WakePipe() else { return nil }
        self.pipe = pipe
    }

    func post(_ message: Message) {
        monitor.locked {
            let wasEmpty = messages.isEmpty
            messages.append(message)
            if wasEmpty { pipe.wake() }
            monitor.broadcast()
        }
    }

    /// Everything posted so far (and the pipe drained). Asked before every line read: when
    /// nothing was posted it costs a lock, not a system call.
    func take() -> [Message] {
        monitor.locked {
            guard !messages.isEmpty else { return [] }
            // Posting wrote one byte when the queue went from empty to not empty.
            pipe.drain()
            let taken = messages
            messages.removeAll(keepingCapacity: true)
            return taken
        }
    }

    /// Waits until something is posted, a stop signal arrives, or `deadline`.
    func wait(until deadline: UInt64?) {
        if sl_stop_signal() != 0 { return }
        _ = pipe.wait(until: deadline)
    }
}

/// Lines on stderr from every thread (worker diagnostics, the progress line) one at a
/// time, so that a line never runs into the progress line or another line.
final class Console: @unchecked Sendable {
    private let monitor = Monitor()
    private var progressShown = false

    func line(_ text: String) {
        monitor.locked {
            if progressShown {
                sl_eprogress("")
                progressShown = false
            }
            sl_eprint(text)
        }
    }

    func progress(_ text: String) {
        monitor.locked {
            sl_eprogress(text)
            progressShown = !text.isEmpty
        }
    }
}
