import CLua
import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// Where events leaving the last stage go, and where dead letters go
/// (docs/ARCHITECTURE.md, "Sources and sinks").
///
/// The runner writes to a sink between stage calls only. A barrier calls `flush` and then
/// commits `checkpointState`; a resumed run calls `resume(at:)` with the state committed
/// last, before anything is written. A sink that cannot take back what it wrote (a pipe,
/// a terminal, a function) has no `checkpointState`: what it got after the last
/// checkpoint is written again on resume (at-least-once).
protocol EventSink: AnyObject {
    /// What it is ("output", "dead-letter file") and where ("out.jsonl", "stdout"), for messages.
    var what: String { get }
    var name: String { get }
    /// Takes the event (the table at `event`, left on the stack). `msgh` is the message
    /// handler for calls into Lua.
    func write(_ L: LuaState, _ event: Int32, codec: JSONCodec, msgh: Int32) -> SinkWrite
    /// Hands what was written to the system (0 or the errno); `durable`: and makes it
    /// survive a crash of the machine too (fsync), as a checkpoint needs.
    func flush(durable: Bool) -> Int32
    /// What a checkpoint commits (a file's length), or nil when what was written cannot
    /// be taken back.
    var checkpointState: Int64? { get }
    /// Goes back to a committed `checkpointState` (a file is truncated to it): 0 or the errno.
    func resume(at state: Int64, _ L: LuaState) -> Int32
    /// Flushes and closes; closing twice does nothing. 0 or the errno.
    func close() -> Int32
}

/// A sink that also takes lines already encoded: the dead-letter file's records.
protocol RecordSink: EventSink {
    /// Writes one line (a newline is added): 0 or the errno.
    func writeLine(_ p: UnsafePointer<CChar>, _ len: Int) -> Int32
}

/// What became of an event handed to a sink.
enum SinkWrite {
    case written
    /// JSON cannot hold the event: the codec's message is on top of the stack.
    case unencodable
    /// The write failed with this errno (the run stops; see `PipelineRun.sinkFailed`).
    case failed(Int32)
    /// The output function raised: its error is on top of the stack.
    case raised
}

/// A JSON-lines file, stdout or a pipe (the output), and the dead-letter file.
extension FileSink: RecordSink {
    func write(_ L: LuaState, _ event: Int32, codec: JSONCodec, msgh: Int32) -> SinkWrite {
        guard codec.encode(L, event) else { return .unencodable }
        var len = 0
        let code = lua_tolstring(L, -1, &len).map { writeLine($0, len) } ?? 0
        sl_pop(L, 1)
        return code == 0 ? .written : .failed(code)
    }

    func flush(durable: Bool) -> Int32 {
        let code = flush()
        guard code == 0, durable, unsynced, let file else { return code }
        // A pipe, a socket or a terminal has nothing to sync (EINVAL): what it was
        // handed is the reader's now. fdatasync: the data and the length that reads it
        // back, not the file's times (one write less to the disk per barrier).
        if fdatasync(fileno(file)) != 0, errno != EINVAL, errno != EROFS {
            return errno
        }
        unsynced = false
        return 0
    }

    /// The file's length: only for a regular file this run opened (the output
    /// `--output FILE`, the dead-letter file). stdout is shared with `print` and the
    /// shell opened it: it is never truncated.
    var checkpointState: Int64? {
        guard owned, let file else { return nil }
        var st = stat()
        guard fstat(fileno(file), &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        let position = ftello(file)
        return position >= 0 ? Int64(position) : nil
    }

    func resume(at state: Int64, _ L: LuaState) -> Int32 {
        guard let file else { return EBADF }
        errno = 0
        unsynced = true
        if fflush(file) != 0 || ftruncate(fileno(file), off_t(state)) != 0 || fseeko(file, off_t(state), SEEK_SET) != 0 {
            return errno != 0 ? errno : EIO
        }
        return 0
    }
}

/// `--output none`: events are counted, not written.
final class DiscardSink: EventSink {
    let what = "output"
    let name = "none"
    func write(_ L: LuaState, _ event: Int32, codec: JSONCodec, msgh: Int32) -> SinkWrite { .written }
    func flush(durable: Bool) -> Int32 { 0 }
    /// Nothing was written: nothing to take back.
    var checkpointState: Int64? { 0 }
    func resume(at state: Int64, _ L: LuaState) -> Int32 { 0 }
    func close() -> Int32 { 0 }
}

/// `p:run{}` without an output: the events are collected in a Lua list (the report's
/// `output`), held by a registry reference the runner owns.
final class CollectSink: EventSink {
    let what = "output"
    let name = "the collected list"
    let list: Int32
    private var count: lua_Integer = 0

    init(list: Int32) {
        self.list = list
    }

    func write(_ L: LuaState, _ event: Int32, codec: JSONCodec, msgh: Int32) -> SinkWrite {
        lua_rawgeti(L, Lua.registry, lua_Integer(list))
        lua_pushvalue(L, event)
        count += 1
        lua_rawseti(L, -2, count)
        sl_pop(L, 1)
        return .written
    }

    func flush(durable: Bool) -> Int32 { 0 }
    /// The number of events collected.
    var checkpointState: Int64? { Int64(count) }

    /// Drops the events collected after the first `state`.
    func resume(at state: Int64, _ L: LuaState) -> Int32 {
        lua_rawgeti(L, Lua.registry, lua_Integer(list))
        while count > state {
            lua_pushnil(L)
            lua_rawseti(L, -2, count)
            count -= 1
        }
        sl_pop(L, 1)
        return 0
    }

    func close() -> Int32 { 0 }
}

/// `p:run{ output = fn }`: each event is passed to a Lua function. What the function did
/// cannot be taken back (at-least-once).
final class FunctionSink: EventSink {
    let what = "output"
    let name = "the output function"
    let function: Int32

    init(function: Int32) {
        self.function = function
    }

    func write(_ L: LuaState, _ event: Int32, codec: JSONCodec, msgh: Int32) -> SinkWrite {
        lua_rawgeti(L, Lua.registry, lua_Integer(function))
        lua_pushvalue(L, event)
        return sl_pcall(L, 1, 0, msgh) == LUA_OK ? .written : .raised
    }

    func flush(durable: Bool) -> Int32 { 0 }
    var checkpointState: Int64? { nil }
    func resume(at state: Int64, _ L: LuaState) -> Int32 { ESPIPE }
    func close() -> Int32 { 0 }
}

/// A buffered output file (or stdout) written line by line. Every write, flush and
/// close says whether it failed (the errno, or 0): nothing written is lost silently.
/// Every write(2) ends at the end of a line (`sl_writeline`), so a reader of the file
/// never sees half a line; the run flushes it before it waits for input and every
/// `PipelineRun.flushInterval` while events flow (ARCHITECTURE.md, "Output latency").
final class FileSink {
    private(set) var file: UnsafeMutablePointer<FILE>?
    /// Opened by this run (not stdout): see `checkpointState` in Sinks.swift.
    let owned: Bool
    /// The path (or "stdout") and what it is ("output", "dead-letter file"), for messages.
    let name: String
    let what: String
    /// Written (or truncated, or just opened) since the last sync (a durable flush): one
    /// with nothing new skips the fsync.
    private(set) var unsynced = true

    /// Takes over `fd` (open for writing); nil (fd left open) if stdio cannot.
    init?(fd: Int32, name: String, what: String) {
        guard let f = fdopen(fd, "w") else { return nil }
        file = f
        owned = true
        self.name = name
        self.what = what
    }

    /// The process's stdout, shared with Lua's `print` and `io.write` so that their
    /// output interleaves in order.
    init(stdout: ()) {
        file = sl_stdout()
        owned = false
        name = "stdout"
        what = "output"
    }

    /// The regular file written (nil for a pipe, a terminal, a device).
    var identity: InputFile.Identity? {
        file.flatMap { InputFile.identity(fileno($0)) }
    }

    func writeLine(_ p: UnsafePointer<CChar>, _ len: Int) -> Int32 {
        guard let file else { return EBADF }
        unsynced = true
        return sl_writeline(file, p, len)
    }

    func flush() -> Int32 {
        guard let file else { return 0 }
        errno = 0
        if fflush(file) != 0 || ferror(file) != 0 { return errno != 0 ? errno : EIO }
        return 0
    }

    /// Flushes and closes (stdout: flushes). Closing twice does nothing.
    func close() -> Int32 {
        guard let file else { return 0 }
        self.file = nil
        errno = 0
        let failed = ferror(file) != 0
        if owned {
            if fclose(file) != 0 || failed { return errno != 0 ? errno : EIO }
        } else if fflush(file) != 0 || failed {
            return errno != 0 ? errno : EIO
        }
        return 0
    }
}
