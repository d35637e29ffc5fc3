import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Counts of what happened to resources during a run (the "resources" part of the report).
public struct ResourceCounts: Equatable, Sendable {
    public var acquired = 0
    /// Released by `:release()`, `<close>`, `with_resource` or an explicit finish.
    public var releasedByHandle = 0
    /// Released because their scope (or owning resource) ended.
    public var releasedByScope = 0
    /// Reclaimed by the garbage collector while open (then released by the runtime).
    public var leaked = 0
    /// Release handlers that failed.
    public var releaseErrors = 0

    public var released: Int { releasedByHandle + releasedByScope + leaked }

    public init() {}
}

/// Statistics for one `timer.measure` label, in seconds.
public struct TimerSummary: Equatable, Sendable {
    public let label: String
    public let count: Int
    public let total: Double
    public let p50: Double
    public let p99: Double
    public let max: Double
}

/// Latency histogram with bounded memory (`sl_Hist`, in C so the timer fast path can
/// record into it): values in nanoseconds, 64 sub-buckets per power of two (relative
/// error under 1.6%), so a service that measures forever keeps a fixed footprint per
/// label. Count, total and maximum are exact; every counter is 64-bit (the total
/// 128-bit), so none wraps in a run that lasts months.
@usableFromInline package final class Histogram {
    @usableFromInline let raw: UnsafeMutablePointer<sl_Hist>

    package init() {
        raw = .allocate(capacity: 1)
        guard sl_hist_init(raw) != 0 else {
            sl_eprint("scopelua: out of memory creating a histogram")
            abort()
        }
    }

    deinit {
        sl_hist_destroy(raw)
        raw.deallocate()
    }

    var count: Int { Int(clamping: raw.pointee.count) }
    /// The sum of all samples, in seconds (it may exceed 2^64 ns).
    var totalSeconds: Double { sl_hist_total_seconds(raw) }
    package var maxNanos: UInt64 { raw.pointee.max }

    @inlinable @inline(__always)
    package func record(_ nanos: UInt64) { sl_hist_record(raw, nanos) }

    /// The value at quantile `q` (0...1), as the middle of its bucket, capped by max.
    package func quantile(_ q: Double) -> UInt64 { sl_hist_quantile(raw, q) }

    /// A copy of the counters, to be merged into a histogram of another thread.
    package var snapshot: HistogramSnapshot {
        let h = raw.pointee
        let buckets = h.buckets.map { Array(UnsafeBufferPointer(start: $0, count: Int(SL_HIST_BUCKETS))) } ?? []
        return HistogramSnapshot(count: h.count, total: h.total, totalHigh: h.totalhigh, max: h.max, buckets: buckets)
    }

    /// Adds the samples of a snapshot (a worker's, at its end) to this histogram.
    package func merge(_ s: HistogramSnapshot) {
        raw.pointee.count &+= s.count
        let (sum, carry) = raw.pointee.total.addingReportingOverflow(s.total)
        raw.pointee.total = sum
        raw.pointee.totalhigh &+= s.totalHigh &+ (carry ? 1 : 0)
        raw.pointee.max = Swift.max(raw.pointee.max, s.max)
        guard let buckets = raw.pointee.buckets, s.buckets.count == Int(SL_HIST_BUCKETS) else { return }
        for (i, n) in s.buckets.enumerated() where n != 0 { buckets[i] &+= n }
    }
}

/// A histogram's counters as plain data (they cross threads; the histogram does not).
package struct HistogramSnapshot: Sendable {
    package var count: UInt64, total: UInt64, totalHigh: UInt64, max: UInt64
    package var buckets: [UInt64]

    /// Both snapshots' samples in one.
    package func adding(_ o: HistogramSnapshot) -> HistogramSnapshot {
        var sum = self
        sum.count &+= o.count
        let (t, carry) = total.addingReportingOverflow(o.total)
        sum.total = t
        sum.totalHigh &+= o.totalHigh &+ (carry ? 1 : 0)
        sum.max = Swift.max(max, o.max)
        if buckets.count == o.buckets.count {
            for i in buckets.indices { sum.buckets[i] &+= o.buckets[i] }
        } else if buckets.isEmpty {
            sum.buckets = o.buckets
        }
        return sum
    }
}

/// The run's accounting: resource counts (kept in the state's C data, which the fast
/// paths update too) and timer statistics.
package final class Ledger {
    private let info: UnsafeMutablePointer<sl_StateInfo>
    private(set) var timerLabels: [String] = []
    private var timerStats: [Histogram] = []

    init(_ info: UnsafeMutablePointer<sl_StateInfo>) {
        self.info = info
    }

    /// The run's counts: every kind's, summed.
    var counts: ResourceCounts {
        var total = ResourceCounts()
        for k in 0..<Int(SL_MAXKINDS) {
            let c = sl_kindcounts(info, Int32(k)).pointee
            total.acquired += Int(c.acquired)
            total.releasedByHandle += Int(c.released_by_handle)
            total.releasedByScope += Int(c.released_by_scope)
            total.leaked += Int(c.leaked)
            total.releaseErrors += Int(c.release_errors)
        }
        return total
    }

    /// The counts of handles of `kind` (a `ResourceKind`'s index).
    package func counts(ofKind kind: Int) -> ResourceCounts {
        let c = sl_kindcounts(info, Int32(kind)).pointee
        var counts = ResourceCounts()
        counts.acquired = Int(c.acquired)
        counts.releasedByHandle = Int(c.released_by_handle)
        counts.releasedByScope = Int(c.released_by_scope)
        counts.leaked = Int(c.leaked)
        counts.releaseErrors = Int(c.release_errors)
        return counts
    }

    /// Each `timer.measure` label's histogram, as plain data, in label order.
    package var timerSnapshots: [(label: String, histogram: HistogramSnapshot)] {
        zip(timerLabels, timerStats).map { ($0, $1.snapshot) }
    }

    /// A new timer label's index.
    package func addTimerLabel(_ label: String) -> Int {
        let h = Histogram()
        guard sl_timers_push(info, h.raw) != 0 else {
            sl_eprint("scopelua: out of memory adding timer label \(label)")
            abort()
        }
        timerLabels.append(label)
        timerStats.append(h)
        return timerLabels.count - 1
    }

    func recordTimer(_ index: Int, nanos: UInt64) {
        timerStats[index].record(nanos)
    }

    var timers: [TimerSummary] {
        zip(timerLabels, timerStats).map { label, h in
            TimerSummary(label: label, count: h.count, total: h.totalSeconds,
                          p50: Double(h.quantile(0.5)) / 1e9, p99: Double(h.quantile(0.99)) / 1e9,
                          max: Double(h.maxNanos) / 1e9)
        }
    }
}
