import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaCore

/// Counters a long-running service keeps (issue 9, item 8): none may wrap.
@Suite(.timeLimit(testTimeLimit)) struct CounterTests {
    /// A hot label past 2^32 samples in one bucket. Recording four billion samples would
    /// take minutes, so the counters are set as if 2^32 - 1 samples of 10 ns had been
    /// recorded (values under 64 ns have a bucket each: bucket 10 holds 10 ns), then one
    /// more is recorded the ordinary way. With 32-bit buckets that one wrapped the bucket
    /// to 0 and both quantiles jumped to the single 1 ms sample.
    @Test func histogramBucketCountsPast32Bits() {
        let rt = Runtime(options: RuntimeOptions())
        defer { rt.close() }
        let index = rt.ledger.addTimerLabel("hot")
        let hist = rt.info.pointee.timers[index]!
        rt.ledger.recordTimer(index, nanos: 10)
        rt.ledger.recordTimer(index, nanos: 1_000_000)
        hist.pointee.buckets[10] = 0xFFFF_FFFF
        hist.pointee.count = 0xFFFF_FFFF + 1
        hist.pointee.total = 10 * 0xFFFF_FFFF + 1_000_000
        rt.ledger.recordTimer(index, nanos: 10)

        #expect(UInt64(hist.pointee.buckets[10]) == 1 << 32)
        let t = rt.timers[0]
        #expect(t.count == (1 << 32) + 1)
        #expect(t.p50 == 10e-9)
        #expect(t.p99 == 10e-9)
        #expect(t.max == 1e-3)
        #expect(abs(t.total - (10 * Double(1 << 32) + 1e6) / 1e9) < 1e-6)
    }

    /// The total of one label passes 2^64 ns (overlapping timers add up faster than the
    /// wall clock): it keeps counting instead of starting again from 0.
    @Test func histogramTotalPast64Bits() {
        let rt = Runtime(options: RuntimeOptions())
        defer { rt.close() }
        let index = rt.ledger.addTimerLabel("overlapping")
        rt.ledger.recordTimer(index, nanos: 1 << 63)
        rt.ledger.recordTimer(index, nanos: 1 << 63)
        rt.ledger.recordTimer(index, nanos: 5)
        let t = rt.timers[0]
        #expect(t.count == 3)
        #expect(t.total == (2 * 9_223_372_036_854_775_808.0 + 5) / 1e9)
        #expect(t.max == 9_223_372_036_854_775_808.0 / 1e9)
    }
}
