import CLua
import CScopeLua

/// `--sandbox`: installs the checks (CScopeLua/permissions.c) once every module is in
/// place, and answers them. The one place a permission is decided: the C wrappers ask
/// `check`, the Swift modules (sql.open, redis.connect) ask `Runtime.permit`.
enum PermissionBindings {
    /// Wraps the stock functions of a runtime created with permissions. Run last in
    /// `Bindings.install`, so that the functions wrapped are the ones scripts will see
    /// (io.open is the runtime's adopting closure by then). Stack: 0.
    static func install(_ rt: Runtime, _ L: LuaState) {
        guard var permissions = rt.options.permissions else { return }
        // The shipped modules are part of scopelua: `require` may always load them.
        if let stdlib = Bindings.stdlibDirectory(rt.options.stdlibPath) {
            permissions.allowModules(under: stdlib)
        }
        rt.options.permissions = permissions
        sl_perm_install(L, check)
    }

    /// The wrappers' question. Stack on entry: ..., operation (integer), subject
    /// (string); both are popped. Returns 0 when allowed, else `raise` with the denial on
    /// top (the C side positions and raises it).
    static let check: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        let op = lua_tointegerx(L, -2, nil)
        let subject = Lua.string(L, -1) ?? ""
        sl_pop(L, 2)
        guard let access = Permissions.Access(rawValue: Int32(truncatingIfNeeded: op)) else { return 0 }
        guard let denial = rt.permit(access, subject) else { return 0 }
        Lua.push(L, denial)
        return raise
    }
}

extension Runtime {
    /// Nil when `access` to `subject` is allowed (always, without a sandbox); else the
    /// denial to report, e.g. `permission denied: write "/etc/passwd" (allowed: out/)`.
    /// What a module checks before it opens a file or connects (see
    /// `Permissions.denial` for what `subject` is per access).
    public func permit(_ access: Permissions.Access, _ subject: String) -> String? {
        options.permissions?.denial(access, subject)
    }

    /// Whether this runtime runs under `--sandbox`.
    public var isSandboxed: Bool { options.permissions != nil }
}
