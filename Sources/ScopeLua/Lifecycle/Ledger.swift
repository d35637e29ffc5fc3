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

/// Latency histogram with bounded memory: values in nanoseconds, 64 sub-buckets per
/// power of two (relative error under 1.6%), so a service that measures forever keeps a
/// fixed footprint per label. The maximum is kept exactly.
struct Histogram {
    private static let subBits = 6
    private static let sub = 1 << subBits
    private var buckets = [UInt32](repeating: 0, count: (64 - subBits + 1) * sub)
    private(set) var count = 0
    private(set) var totalNanos: UInt64 = 0
    private(set) var maxNanos: UInt64 = 0

    private static func index(_ v: UInt64) -> Int {
        if v < UInt64(sub) { return Int(v) }
        let e = 63 - v.leadingZeroBitCount
        let s = Int((v >> UInt64(e - subBits)) & UInt64(sub - 1))
        return (e - subBits + 1) * sub + s
    }

    private static func lowerBound(_ i: Int) -> UInt64 {
        if i < sub { return UInt64(i) }
        let e = i / sub + subBits - 1
        let s = UInt64(i % sub)
        return (1 << UInt64(e)) | (s << UInt64(e - subBits))
    }

    mutating func record(_ nanos: UInt64) {
        buckets[Self.index(nanos)] &+= 1
        count += 1
        totalNanos &+= nanos
        if nanos > maxNanos { maxNanos = nanos }
    }

    /// The value at quantile `q` (0...1), as the middle of its bucket, capped by max.
    func quantile(_ q: Double) -> UInt64 {
        guard count > 0 else { return 0 }
        let rank = Swift.max(1, Int((q * Double(count)).rounded(.up)))
        var seen = 0
        for (i, c) in buckets.enumerated() where c > 0 {
            seen += Int(c)
            if seen >= rank {
                let lo = Self.lowerBound(i)
                let hi = Self.lowerBound(i + 1)
                return Swift.min(maxNanos, lo + (hi - lo) / 2)
            }
        }
        return maxNanos
    }
}

/// The run's accounting: resource counts and timer statistics.
final class Ledger {
    var counts = ResourceCounts()
    private(set) var timerLabels: [String] = []
    private var timerStats: [Histogram] = []

    /// A new timer label's index.
    func addTimerLabel(_ label: String) -> Int {
        timerLabels.append(label)
        timerStats.append(Histogram())
        return timerLabels.count - 1
    }

    func recordTimer(_ index: Int, nanos: UInt64) {
        timerStats[index].record(nanos)
    }

    var timers: [TimerSummary] {
        zip(timerLabels, timerStats).map { label, h in
            TimerSummary(label: label, count: h.count, total: Double(h.totalNanos) / 1e9,
                          p50: Double(h.quantile(0.5)) / 1e9, p99: Double(h.quantile(0.99)) / 1e9,
                          max: Double(h.maxNanos) / 1e9)
        }
    }
}
