import CLua
import CScopeLua

/// Something a runtime installs above the core: a resource kind's module (files, timers,
/// SQLite), JSON, the pipeline engine, `os.exit`. The core installs its own bindings
/// (scopes, `defer`, `with_resource`, handles, `log`) itself; which modules a standard
/// runtime gets is listed once, above the core (`Runtime.standardModules` in ScopeLua,
/// docs/ARCHITECTURE.md, "Layers").
package protocol RuntimeModule {
    /// Installs the module's globals, metatables and state into a fresh runtime, in the
    /// order of the runtime's module list. Stack: 0.
    static func install(_ rt: Runtime, _ L: LuaState)
    /// Runs when the runtime closes, before it releases what is still open (modules in
    /// installation order): a last sweep, a warning about work that never happened.
    static func willClose(_ rt: Runtime)
}

extension RuntimeModule {
    package static func willClose(_ rt: Runtime) {}
}

extension Runtime {
    /// The state `T` a module keeps on this runtime, made by `make` on first use (one
    /// per type). A dictionary lookup: code on a hot path (a pipeline's per-event timer
    /// check) takes the state object once and keeps it, instead of asking per event.
    @inlinable
    package func state<T: AnyObject>(_: T.Type, default make: () -> T) -> T {
        let key = ObjectIdentifier(T.self)
        if let state = moduleStates[key] { return unsafeDowncast(state, to: T.self) }
        let state = make()
        moduleStates[key] = state
        return state
    }
}
