import CLua
import CScopeLua

/// What the pipeline engine keeps on a runtime (its module state, see `RuntimeModule`).
final class PipelineState {
    /// Registered stages and pipelines.
    let registry = PipelineRegistry()
    /// The pipeline running now, if any.
    var activeRun: PipelineRun?
    /// Pipelines run from Lua (`p:run{}`) so far.
    var runs = 0
    var stageMetatable: UnsafeRawPointer?
    var pipelineMetatable: UnsafeRawPointer?
}

extension Runtime {
    /// The pipeline engine's state.
    var pipelineState: PipelineState { state(PipelineState.self) { PipelineState() } }

    /// Registered stages and pipelines.
    package var pipelines: PipelineRegistry { pipelineState.registry }

    /// The pipeline running now, if any.
    var activeRun: PipelineRun? {
        get { pipelineState.activeRun }
        set { pipelineState.activeRun = newValue }
    }

    /// Pipelines run from Lua (`p:run{}`) so far.
    var pipelineRuns: Int {
        get { pipelineState.runs }
        set { pipelineState.runs = newValue }
    }

    var stageMetatable: UnsafeRawPointer? {
        get { pipelineState.stageMetatable }
        set { pipelineState.stageMetatable = newValue }
    }

    var pipelineMetatable: UnsafeRawPointer? {
        get { pipelineState.pipelineMetatable }
        set { pipelineState.pipelineMetatable = newValue }
    }
}
