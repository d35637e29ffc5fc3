import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Where things happen and what they are called: script sites, handle descriptions,
/// interned scope paths.
extension Runtime {

    /// The script position of the innermost Lua function on the stack (the one that
    /// called into the runtime). Stack: 0.
    @inlinable @inline(__always)
    package func currentSite(_ L: LuaState) -> Site {
        switch sl_site(L, &siteScratch) {
        case 0:
            return .unknown
        case 1:
            return Site(source: siteScratch.source, line: siteScratch.line)
        default:
            let source = internSiteSource()
            sl_site_remember(L, source)
            return Site(source: source, line: siteScratch.line)
        }
    }

    @usableFromInline func internSiteSource() -> Int32 {
        let short = withUnsafeBytes(of: &siteScratch.short_src) { raw in
            String(cString: raw.bindMemory(to: CChar.self).baseAddress.unsafelyUnwrapped)
        }
        if let known = sourceKeys[short] { return known }
        let index = Int32(sourceNames.count)
        sourceNames.append(short)
        sourceKeys[short] = index
        return index
    }

    package func describe(_ site: Site) -> String {
        guard site.source >= 0, Int(site.source) < sourceNames.count else { return "?" }
        return "\(sourceNames[Int(site.source)]):\(site.line)"
    }

    /// Kind name and id: `file#3`.
    func shortName(_ h: Handle) -> String {
        "\(kindNames[Int(h.pointee.kind)])#\(h.pointee.id)"
    }

    /// The label of an open handle: its Swift state's, or a timer's interned label.
    func label(_ h: Handle) -> String? {
        if let r = h.pointee.resource { return r.label }
        if h.pointee.kind == ResourceKind.timer.rawValue {
            let i = Int(h.pointee.aux)
            return i >= 0 && i < ledger.timerLabels.count ? ledger.timerLabels[i] : nil
        }
        return nil
    }

    /// `file#3 "out.log"` for an open handle (or a plain kind in any state).
    package func describe(_ h: Handle) -> String {
        if let label = label(h) { return "\(shortName(h)) \"\(label)\"" }
        return shortName(h)
    }

    /// `file#3 "out.log"` for the handle userdata at `idx`, open or released: a released
    /// handle's label is its user value. Stack: 0.
    func describeHandle(_ h: Handle, _ L: LuaState, _ idx: Int32) -> String {
        if h.pointee.isOpen || h.pointee.kind == ResourceKind.timer.rawValue { return describe(h) }
        guard lua_getiuservalue(L, idx, 1) == LUA_TSTRING, let label = Lua.string(L, -1) else {
            sl_pop(L, 1)
            return shortName(h)
        }
        sl_pop(L, 1)
        return "\(shortName(h)) \"\(label)\""
    }

    func internPath(_ scope: Scope) -> Int {
        if let i = scope.pathIndex { return i }
        let path = scope.path
        let i = scopePathIndex[path] ?? {
            scopePaths.append(path)
            scopePathIndex[path] = scopePaths.count - 1
            return scopePaths.count - 1
        }()
        scope.pathIndex = i
        return i
    }

    /// How a released handle was released, from its own memory.
    func describeRelease(_ h: Handle) -> String {
        let p = h.pointee
        switch p.how {
        case Int32(SL_BY_HANDLE): return "released at \(describe(Site(source: p.relsource, line: p.relline)))"
        case Int32(SL_BY_CLOSE):
            return "released by <close> at the end of the block that acquired it at \(describe(p.site))"
        case Int32(SL_BY_SCOPE):
            let path = p.detail >= 0 && Int(p.detail) < scopePaths.count ? scopePaths[Int(p.detail)] : "?"
            return "released at the end of scope \(path)"
        case Int32(SL_BY_PARENT):
            let kind = p.relsource >= 0 && Int(p.relsource) < kindNames.count ? kindNames[Int(p.relsource)] : "resource"
            return "released with \(kind)#\(p.detail)"
        case Int32(SL_BY_GC): return "reclaimed by the garbage collector"
        default: return "open"
        }
    }

    package func diagnose(_ line: String) {
        options.diagnostics(line)
    }
}
