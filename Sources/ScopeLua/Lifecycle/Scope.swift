import CScopeLua

/// A node of the ownership tree: run → pipeline → stage → worker → task.
///
/// A scope keeps the handles acquired while it was current, oldest first, and releases
/// what is still open when it ends, newest first. Released handles leave the registry at
/// once, so a million acquire/release pairs in one scope do not grow it. The registry
/// holds handle pointers: valid while open (see `sl_Handle`), no reference counting.
final class Scope {
    let name: String
    let parent: Scope?
    private(set) var entries = ContiguousArray<Handle?>()
    private var holes = 0
    private(set) var ended = false
    /// Index of `path` among the runtime's interned paths, once interned.
    var pathIndex: Int?

    init(name: String, parent: Scope?) {
        self.name = name
        self.parent = parent
    }

    /// `run/analytics/log_events/task`.
    private(set) lazy var path: String = parent.map { "\($0.path)/\(name)" } ?? name

    /// Number of open resources (defers included).
    var openCount: Int { entries.count - holes }

    /// Open handles, oldest first.
    var openHandles: [Handle] { entries.compactMap { $0 } }

    @inline(__always)
    func add(_ h: Handle) {
        h.pointee.scope = Unmanaged.passUnretained(self).toOpaque()
        h.pointee.slot = Int32(entries.count)
        entries.append(h)
    }

    /// Removes a handle released before its scope ended. O(1) amortized: the newest
    /// entry is popped; an older one leaves a hole, and holes are compacted once they
    /// are half the registry.
    @inline(__always)
    func remove(_ h: Handle) {
        let i = Int(h.pointee.slot)
        h.pointee.scope = nil
        h.pointee.slot = -1
        guard i >= 0, i < entries.count, entries[i] == h else { return }
        if i == entries.count - 1 {
            entries.removeLast()
            if holes > 0 { trimHoles() }
        } else {
            entries[i] = nil
            holes += 1
            if holes > 16, holes * 2 > entries.count { compact() }
        }
    }

    private func trimHoles() {
        while let last = entries.last, last == nil {
            entries.removeLast()
            holes -= 1
        }
    }

    private func compact() {
        var kept = ContiguousArray<Handle?>()
        kept.reserveCapacity(entries.count - holes)
        for case let h? in entries {
            h.pointee.slot = Int32(kept.count)
            kept.append(h)
        }
        entries = kept
        holes = 0
    }

    /// Makes an ended, empty scope usable again (a stage's task scope is reused from
    /// event to event instead of allocated for each).
    func reopen() {
        ended = false
    }

    /// Marks the scope as ending and detaches its newest open handle, if any.
    func popNewest() -> Handle? {
        ended = true
        while let last = entries.popLast() {
            if let h = last {
                h.pointee.scope = nil
                h.pointee.slot = -1
                return h
            }
            holes -= 1
        }
        return nil
    }
}
