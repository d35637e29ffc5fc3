import CScopeLua

/// An open handle as plain data: what `/resources` shows (docs/ARCHITECTURE.md, "The
/// board"). Taken on the runtime's thread; read on any.
package struct OpenHandle: Sendable, Equatable {
    package var id: Int64
    package var kind: String
    package var label: String?
    /// `run/p/enrich/task`: the scope that will release it.
    package var scope: String
    /// When it was acquired (monotonic ns): its age is computed by the reader.
    package var acquiredAt: UInt64
    /// `job.lua:12`, or `?`.
    package var site: String
}

/// A kind's resource counts and how many of its handles are open now.
package struct KindCounts: Sendable, Equatable {
    package var kind: String
    package var counts: ResourceCounts
    package var open: Int { counts.acquired - counts.released }

    package init(kind: String, counts: ResourceCounts) {
        self.kind = kind
        self.counts = counts
    }
}

extension Runtime {
    /// Every handle open in this runtime, oldest first, whatever scope holds it (a
    /// stage's, a task's, a `scope()` inside either, a timer's). Found by walking the
    /// record pool rather than the scope tree: a scope knows its parent, not its
    /// children, and every open handle is an open, registered record. Deferred calls
    /// (kind `defer`) are left out, as `:resources` leaves them out. On the runtime's
    /// own thread only (rule 6); costs one look per record the pool ever allocated.
    package func openHandleSnapshot() -> [OpenHandle] {
        let pool = arena.pool.pointee
        guard let chunks = pool.chunks else { return [] }
        var found: [OpenHandle] = []
        for c in 0..<Int(pool.nchunks) {
            guard let chunk = chunks[c] else { continue }
            for i in 0..<Int(SL_POOL_CHUNK) {
                let h = chunk + i
                guard h.pointee.how == Int32(SL_OPEN), let registry = h.pointee.scope, let owner = registry.pointee.scope,
                      h.pointee.resource?.isHandle ?? true else { continue }
                let scope = Unmanaged<Scope>.fromOpaque(owner).takeUnretainedValue()
                let kind = Int(h.pointee.kind)
                found.append(OpenHandle(
                    id: h.pointee.id, kind: kind >= 0 && kind < kindNames.count ? kindNames[kind] : "resource",
                    label: label(h), scope: scope.path, acquiredAt: h.pointee.start, site: describe(h.pointee.site)))
            }
        }
        return found.sorted { $0.id < $1.id }
    }

    /// Resource counts by kind (the kinds this runtime knows, in `ResourceKind` order).
    package var countsByKind: [KindCounts] {
        kindNames.indices.map { KindCounts(kind: kindNames[$0], counts: ledger.counts(ofKind: $0)) }
    }
}
