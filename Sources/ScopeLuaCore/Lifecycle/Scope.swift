import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// A node of the ownership tree: run → pipeline → stage → worker → task.
///
/// A scope keeps the handles acquired while it was current, oldest first, and releases
/// what is still open when it ends, newest first. Released handles leave the registry at
/// once, so a million acquire/release pairs in one scope do not grow it. The registry
/// holds record pointers (runtime-owned memory, see `sl_Handle`), no reference counting.
@usableFromInline package final class Scope {
    package let name: String
    package let parent: Scope?
    /// The pool its registered records come from (kept alive while the scope is).
    let arena: RecordArena
    /// The open handles, in C (`sl_Registry`) so that the timer fast path can use it.
    @usableFromInline let registry: UnsafeMutablePointer<sl_Registry>
    @usableFromInline package internal(set) var ended = false
    /// Index of `path` among the runtime's interned paths, once interned.
    var pathIndex: Int?

    /// A child of `parent`, or (with `arena`) a root.
    package init(name: String, parent: Scope?, arena: RecordArena? = nil) {
        self.name = name
        self.parent = parent
        guard let arena = arena ?? parent?.arena else {
            sl_eprint("scopelua: scope \(name) has neither a parent nor an arena")
            abort()
        }
        self.arena = arena
        guard let registry = sl_registry_new(nil) else {
            sl_eprint("scopelua: out of memory creating scope \(name)")
            abort()
        }
        self.registry = registry
        registry.pointee.scope = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        // Handles still registered (only possible if the runtime was torn down without
        // ending this scope) must not point at freed memory.
        for h in openHandles {
            h.pointee.scope = nil
            h.pointee.slot = -1
        }
        sl_registry_free(registry)
    }

    /// `run/analytics/log_events/task`.
    package private(set) lazy var path: String = parent.map { "\($0.path)/\(name)" } ?? name

    /// Number of open resources (defers included).
    @inlinable package var openCount: Int { Int(registry.pointee.count - registry.pointee.holes) }

    /// The open resources a script can see (what `scope:resources()` lists) and the
    /// deferred calls still to run, counted apart.
    var visibleCounts: (resources: Int, defers: Int) {
        let open = openHandles
        let defers = open.filter { !($0.pointee.resource?.isHandle ?? true) }.count
        return (open.count - defers, defers)
    }

    /// Open handles, oldest first.
    package var openHandles: [Handle] {
        guard let entries = registry.pointee.entries else { return [] }
        return (0..<Int(registry.pointee.count)).compactMap { entries[$0] }
    }

    @inlinable @inline(__always)
    package func add(_ h: Handle) {
        sl_registry_add(registry, h)
    }

    /// Makes an ended, empty scope usable again (a stage's task scope is reused from
    /// event to event instead of allocated for each).
    @inlinable package func reopen() {
        ended = false
    }

    /// Marks the scope as ending and detaches its newest open handle, if any.
    func popNewest() -> Handle? {
        ended = true
        return sl_registry_popnewest(registry)
    }
}
