import CScopeLua
import Foundation
import Testing
@testable import ScopeLua

/// The TSC calibration and its later check (issue 9, item 9), fed made-up readings: no
/// assertion depends on how busy the machine is.
@Suite(.timeLimit(testTimeLimit)) struct ClockTests {
    /// A TSC of 2.5 GHz: 0.4 ns per tick, exactly, for tick counts that are multiples of 5.
    static let rate = (UInt64(2) << 32) / 5

    /// A kernel reading at `tsc` (a multiple of 5) bracketed `width` ticks wide, the
    /// kernel's nanoseconds `skew` off the truth.
    static func sample(_ tsc: UInt64, width: UInt64 = 100, skew: Int64 = 0) -> sl_ClockSample {
        sl_ClockSample(tsc_before: tsc - width / 2, ns: UInt64(Int64(tsc * 2 / 5) + skew), tsc_after: tsc + width / 2)
    }

    static func rate(_ start: [sl_ClockSample], _ end: [sl_ClockSample]) -> UInt64 {
        start.withUnsafeBufferPointer { s in
            end.withUnsafeBufferPointer { e in sl_clock_rate(s.baseAddress, e.baseAddress, Int32(s.count)) }
        }
    }

    /// Seven pairs 500 us apart. One pair's end reading is 20 us late although its
    /// bracket is narrow (the median ignores it: a mean would be 0.6% off), and one
    /// pair's start bracket is wide (this thread was interrupted between the reads:
    /// the pair is dropped, whatever its readings say).
    @Test func medianIgnoresAnOutlierAndWideBracketsAreDropped() {
        let start = (0..<7).map { Self.sample(1_000_000 + UInt64($0) * 500) }
        var end = (0..<7).map { Self.sample(2_250_000 + UInt64($0) * 500) }
        end[2] = Self.sample(2_251_000, skew: 20_000)
        var interrupted = start
        interrupted[4] = sl_ClockSample(tsc_before: start[4].tsc_before, ns: start[4].ns - 300_000,
                                        tsc_after: start[4].tsc_after + 1_000_000)
        #expect(Self.rate(start, end) == Self.rate)
        #expect(Self.rate(interrupted, end) == Self.rate)
        // The old calibration's single reading pair, as if it were the outlier.
        let skewed = Self.rate([start[2]], [end[2]])
        #expect(skewed > Self.rate + Self.rate / 100)
    }

    /// When no more than half the pairs are usable, there is no rate (the clock then
    /// stays with the kernel's).
    @Test func tooFewUsablePairsGiveNoRate() {
        let start = (0..<4).map { Self.sample(1_000_000 + UInt64($0) * 500) }
        var end = (0..<4).map { Self.sample(2_250_000 + UInt64($0) * 500) }
        end[1] = Self.sample(2_250_500, width: 10_000)
        end[3] = Self.sample(2_251_500, width: 10_000)
        #expect(Self.rate(start, end) == 0)
        end[3] = Self.sample(2_251_500)
        #expect(Self.rate(start, end) == Self.rate)
        #expect(Self.rate([], []) == 0)
    }

    static func clock() -> sl_Clock {
        var c = sl_Clock()
        c.state = Int32(SL_CLOCK_TSC)
        c.ns0 = 0
        c.tsc0 = 0
        c.mult = rate
        c.checkticks = 2_500_000_000  // 1 s
        c.checkat = 2_500_000_000
        return c
    }

    /// A later check that agrees (within a thousandth of the time since calibration)
    /// keeps the TSC and schedules the next check twice as far ahead.
    @Test func agreeingCheckKeepsTheTSC() {
        var c = Self.clock()
        var s = Self.sample(2_500_000_000, skew: -500_000)  // 1 s in, the TSC 0.05% fast
        #expect(sl_clock_check(&c, &s, 1) == 1)
        #expect(c.state == Int32(SL_CLOCK_TSC))
        #expect(c.checkticks == 5_000_000_000)
        #expect(c.checkat == s.tsc_after + 5_000_000_000)
    }

    /// A check where the TSC ran 10% fast, or where the kernel no longer keeps its clock
    /// with the TSC: the clock falls back to the kernel's, moved forward so that no
    /// reading after the switch is below one before it.
    @Test(arguments: [(skew: Int64(-100_000_000), kernelTSC: Int32(1)), (skew: Int64(0), kernelTSC: Int32(0))])
    func disagreeingCheckFallsBackWithoutGoingBackwards(skew: Int64, kernelTSC: Int32) {
        var c = Self.clock()
        var s = Self.sample(2_500_000_000, skew: skew)
        let lastTSCReading = sl_clock_tsc_ns(&c, s.tsc_after)
        #expect(sl_clock_check(&c, &s, kernelTSC) == 0)
        #expect(c.state == Int32(SL_CLOCK_FALLBACK))
        #expect(s.ns + c.offset >= lastTSCReading)  // the kernel's reading at the check, moved
        // The TSC's lead at the end of the bracket (50 ticks, 20 ns, after its middle),
        // give or take the fixed point's rounding.
        let lead = Int64(skew < 0 ? -skew : 0) + 20
        #expect(abs(Int64(c.offset) - lead) <= 1)
    }

    /// The process's own clock: whichever it chose, readings of one thread never go
    /// backwards.
    @Test func processClockIsMonotonic() {
        let state = sl_clock_state()
        #expect([SL_CLOCK_TSC, SL_CLOCK_SYSTEM, SL_CLOCK_FALLBACK].map(Int32.init).contains(state))
        var last = sl_monotonic_ns()
        var backwards = 0
        for _ in 0..<100_000 {
            let now = sl_monotonic_ns()
            if now < last { backwards += 1 }
            last = now
        }
        #expect(backwards == 0)
    }
}
