// `import ScopeLua` brings the layers below with it: a host gets the core's public API
// (Runtime, RuntimeOptions, LuaError, LuaValue, Report, ...) with the engine's, and every
// file of the engine (Pipeline/, Runner/, Bindings/) sees the core and the resources
// without importing them itself.
@_exported import ScopeLuaCore
@_exported import ScopeLuaResources

extension Runtime {
    /// The modules a standard runtime installs, in order, one line each: a new resource
    /// kind or module adds its line here (docs/ARCHITECTURE.md, "Where things go").
    package static var standardModules: [any RuntimeModule.Type] {
        [
            FileBindings.self,      // fs, io.open adoption     (ScopeLuaResources/Files)
            TimerBindings.self,     // timer                    (ScopeLuaResources/Timers)
            SQLBindings.self,       // sql                      (ScopeLuaResources/SQLite)
            JSONBindings.self,      // json                     (ScopeLuaResources/JSON)
            SharedBindings.self,    // shared                   (ScopeLuaResources/Shared)
            RedisBindings.self,     // redis                    (ScopeLuaResources/Redis)
            PipelineBindings.self,  // stage, pipeline, ctx     (Bindings/PipelineBindings.swift)
            ExitBindings.self,      // os.exit                  (Bindings/ExitBindings.swift)
        ]
    }

    /// A runtime with every standard module installed (what `scopelua run` and the REPL
    /// use).
    public convenience init(options: RuntimeOptions = RuntimeOptions()) {
        self.init(options: options, modules: Runtime.standardModules)
    }
}
