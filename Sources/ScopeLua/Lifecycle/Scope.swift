/// A node of the ownership tree: run → pipeline → stage → worker → task.
///
/// A scope keeps the resources acquired while it was current, oldest first, and
/// releases what is still open when it ends, newest first. Released resources leave the
/// registry at once, so a million acquire/release pairs in one scope do not grow it.
final class Scope {
    let name: String
    let parent: Scope?
    private(set) var entries = ContiguousArray<Resource?>()
    private var holes = 0
    private(set) var ended = false

    init(name: String, parent: Scope?) {
        self.name = name
        self.parent = parent
    }

    /// `run/analytics/log_events/task`.
    private(set) lazy var path: String = parent.map { "\($0.path)/\(name)" } ?? name

    /// Index of `path` among the runtime's interned paths, once interned.
    var pathIndex: Int?

    /// Number of open resources (defers included).
    var openCount: Int { entries.count - holes }

    /// Open resources, oldest first.
    var openResources: [Resource] { entries.compactMap { $0 } }

    func add(_ r: Resource) {
        r.scope = self
        r.slot = entries.count
        entries.append(r)
    }

    /// Removes a resource released before its scope ended. O(1) amortized: the newest
    /// entry is popped; an older one leaves a hole, and holes are compacted once they
    /// are half the registry.
    func remove(_ r: Resource) {
        let i = r.slot
        r.scope = nil
        r.slot = -1
        guard i >= 0, i < entries.count, entries[i] === r else { return }
        if i == entries.count - 1 {
            entries.removeLast()
            while let last = entries.last, last == nil {
                entries.removeLast()
                holes -= 1
            }
        } else {
            entries[i] = nil
            holes += 1
            if holes > 16, holes * 2 > entries.count { compact() }
        }
    }

    private func compact() {
        var kept = ContiguousArray<Resource?>()
        kept.reserveCapacity(entries.count - holes)
        for case let r? in entries {
            r.slot = kept.count
            kept.append(r)
        }
        entries = kept
        holes = 0
    }

    /// Marks the scope as ending and detaches its newest open resource, if any.
    func popNewest() -> Resource? {
        ended = true
        while let last = entries.popLast() {
            if let r = last {
                r.scope = nil
                r.slot = -1
                return r
            }
            holes -= 1
        }
        return nil
    }
}
