import CLua
import CScopeLua

/// Where something happened in a script: an interned source name and a line.
/// `Runtime.describe(_:)` turns it into `job.lua:12`.
struct Site: Equatable {
    var source: Int32
    var line: Int32
    static let unknown = Site(source: -1, line: 0)
}

/// The kinds of resources the runtime knows. Each resource file adds its own constant;
/// `index` keys per-kind tables (metatables, counters) so the hot path never hashes.
struct ResourceKind: Equatable {
    let name: String
    let index: Int
    static let count = 8
}

/// How a resource stopped being open.
enum ReleaseCause {
    /// `h:release()`, `with_resource`, or an explicit finish (commit), at a site.
    case handle(Site)
    /// Leaving the `<close>` block that holds it (its site is the acquisition's).
    case closed
    /// The scope that owned it ended.
    case scopeEnd(Scope)
    /// The garbage collector reclaimed its handle while it was open: a leak.
    case collected
    /// The resource that owned it (a connection, for a statement) was released.
    case parent(Resource)
}

/// A runtime-owned resource: the Swift-side record a Lua handle points at.
///
/// Subclasses implement `close` (the release handler). The runtime guarantees it runs at
/// most once, after the record is already marked released, so a failing release never
/// leaves a live handle behind (the two-phase teardown of STYLE.md, per resource).
class Resource {
    final let id: Int
    final let kind: ResourceKind
    /// What the resource is, in a user's words: a path, a timer label, a SQL text.
    final let label: String?
    /// Where the script acquired it.
    final let site: Site
    /// The scope that owns it while it is open; `slot` is its index there. Unowned:
    /// a scope releases (and so detaches) every resource before it ends, so while this
    /// is set the scope is alive.
    final unowned(unsafe) var scope: Scope?
    final var slot = -1
    /// Set once, when released.
    final var releasedBy: ReleaseCause?
    /// The handle's memory while the resource is open (the userdata cannot have been
    /// freed: its finalizer would have released the resource first).
    final var handle: UnsafeMutablePointer<sl_Handle>?
    /// The resource that owns this one as well (a statement's connection), and the
    /// children this one owns: released before it, newest first.
    final var owner: Resource?
    final var children: [Resource] = []

    /// Monotonic nanoseconds at acquisition.
    final let acquiredAt = sl_monotonic_ns()

    init(id: Int, kind: ResourceKind, label: String?, site: Site) {
        self.id = id
        self.kind = kind
        self.label = label
        self.site = site
    }

    final var isOpen: Bool { releasedBy == nil }

    /// Whether `scope:resources()` lists it and it counts as a handle (defers do not).
    var isHandle: Bool { true }

    /// The release handler. `errIndex` is the stack index of the error that ends the
    /// resource's life (0 when it ends normally). On failure, push an error object and
    /// return false. Runs with the record already marked released.
    func close(_ runtime: Runtime, _ L: LuaState, error errIndex: Int32) -> Bool { true }

    /// Called as the handle is released: keep in its memory what must outlive the
    /// record (a timer's elapsed time).
    func finish(_ handle: UnsafeMutablePointer<sl_Handle>) {}

    /// Pushes the kind's own field `key` (e.g. a file's `path`); false if it has none.
    func pushField(_ key: String, _ runtime: Runtime, _ L: LuaState) -> Bool { false }

}
