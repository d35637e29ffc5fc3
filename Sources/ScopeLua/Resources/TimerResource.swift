import CLua
import CScopeLua

extension ResourceKind {
    static let timer = ResourceKind(name: "timer", index: 1)
}

/// `timer.measure(label)`: on release, the elapsed time is recorded under its label.
final class TimerResource: Resource {
    let labelIndex: Int
    private(set) var stop: UInt64 = 0

    init(id: Int, label: String, labelIndex: Int, site: Site) {
        self.labelIndex = labelIndex
        super.init(id: id, kind: .timer, label: label, site: site)
    }

    /// Seconds since the timer acquiredAted, frozen once it is released.
    var elapsed: Double {
        Double((isOpen ? sl_monotonic_ns() : stop) &- acquiredAt) / 1e9
    }

    override func finish(_ handle: UnsafeMutablePointer<sl_Handle>) {
        stop = sl_monotonic_ns()
        handle.pointee.value = Int64(stop &- acquiredAt)
    }

    override func close(_ runtime: Runtime, _ L: LuaState, error errIndex: Int32) -> Bool {
        if stop == 0 { stop = sl_monotonic_ns() }
        runtime.ledger.recordTimer(labelIndex, nanos: stop &- acquiredAt)
        return true
    }
}
