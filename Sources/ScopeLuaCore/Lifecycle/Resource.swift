import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// The runtime's record of one resource (see `sl_Handle`): runtime-owned memory from the
/// state's pool, valid while anything in the runtime refers to it (ARCHITECTURE.md,
/// "Ownership of records"). A released handle reached through its box may instead be
/// the box's tomb, valid while the box is on the Lua stack.
public typealias Handle = UnsafeMutablePointer<sl_Handle>

/// The pool the records of one state come from. A class so that the scopes (whose
/// registries point at records) and the runtime share it: the memory goes only when
/// the last of them does, whatever order they are torn down in.
package final class RecordArena {
    package let pool: UnsafeMutablePointer<sl_Pool>

    init() {
        guard let pool = sl_pool_new() else {
            sl_eprint("scopelua: out of memory creating the handle record pool")
            abort()
        }
        self.pool = pool
    }

    deinit { sl_pool_free(pool) }
}

/// Where something happened in a script: an interned source name and a line.
/// `Runtime.describe(_:)` turns it into `job.lua:12`.
@usableFromInline package struct Site: Hashable, Sendable {
    @usableFromInline var source: Int32
    @usableFromInline var line: Int32
    @usableFromInline init(source: Int32, line: Int32) {
        self.source = source
        self.line = line
    }
    @usableFromInline package static let unknown = Site(source: -1, line: 0)
}

/// The kinds of resources the runtime knows. `index` keys per-kind tables (metatables,
/// names) so the hot path never hashes; a plain enum, so using one costs nothing.
@usableFromInline package enum ResourceKind: Int32, CaseIterable {
    case file = 0, timer, `defer`, ioFile, sqlite, statement, transaction, shared, redis

    /// What scripts see as `h.kind`.
    @usableFromInline package var name: String {
        switch self {
        case .file: return "file"
        case .timer: return "timer"
        case .defer: return "defer"
        case .ioFile: return "io"
        case .sqlite: return "sqlite"
        case .statement: return "statement"
        case .transaction: return "transaction"
        case .shared: return "shared"
        case .redis: return "redis"
        }
    }

    /// `2998 more leaks of files acquired at ...`
    var plural: String {
        switch self {
        case .ioFile: return "io files"
        case .sqlite: return "sqlite connections"
        case .defer: return "deferred calls"
        case .shared: return "shared dictionary handles"
        case .redis: return "redis connections"
        default: return name + "s"
        }
    }

    @usableFromInline package var index: Int { Int(rawValue) }
    @usableFromInline static let count = 9
}

/// How a resource stopped being open.
package enum ReleaseCause {
    /// `h:release()`, `with_resource`, or an explicit finish (commit), at a site.
    case handle(Site)
    /// Leaving the `<close>` block that holds it (its site is the acquisition's).
    case closed
    /// The scope that owned it ended.
    case scopeEnd(Scope)
    /// The garbage collector reclaimed its handle while it was open: a leak.
    case collected
    /// The resource that owned it (a connection, for a statement) was released.
    case parent(Handle)
}

/// Swift-side state of a resource kind that needs more than its handle's memory (a
/// file's io stream, a database connection). Subclasses implement `close`, the release
/// handler; the runtime runs it at most once, after the handle is already marked
/// released, so a failing release never leaves a live handle behind. Open, for the kinds
/// defined above the core (ScopeLuaResources).
open class Resource {
    /// What the resource is, in a user's words: a path, a SQL text.
    package let label: String?
    /// The handles this resource owns (a connection's statements), released before it,
    /// newest first.
    package final var children: [Handle] = []
    /// The handle that owns this one (a statement's connection) while open.
    package final var ownerHandle: Handle?

    public init(label: String?) {
        self.label = label
    }

    /// Whether it counts as a handle the script can see (defers do not).
    open var isHandle: Bool { true }

    /// The release handler. `errIndex` is the stack index of the error that ends the
    /// resource's life (0 when it ends normally). On failure, push an error object and
    /// return false.
    open func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool { true }

    /// Pushes the kind's own field `key` (e.g. a file's `path`); false if it has none.
    open func pushField(_ key: String, _ runtime: Runtime, _ L: LuaState) -> Bool { false }
}

/// Where leaks come from: a kind and an acquisition site.
struct LeakSite: Hashable {
    var kind: Int32
    var site: Site
}

extension sl_Handle {
    @inlinable package var isOpen: Bool { how == Int32(SL_OPEN) }
    package var site: Site { Site(source: source, line: line) }

    /// The Swift state, for kinds that have one, while open.
    @inlinable package var resource: Resource? {
        record.map { Unmanaged<Resource>.fromOpaque($0).takeUnretainedValue() }
    }

    /// The owning scope while open.
    package var owningScope: Scope? {
        scope.flatMap { $0.pointee.scope.map { Unmanaged<Scope>.fromOpaque($0).takeUnretainedValue() } }
    }
}
