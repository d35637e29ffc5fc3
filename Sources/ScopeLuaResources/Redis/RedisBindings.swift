import CHiredis
import CLua
import CScopeLua
import ScopeLuaCore

/// The redis module's state on a runtime (see `RuntimeModule`).
final class RedisState {
    /// Identity of the metatable of pipeline objects (`p` in `r:pipeline(function(p) ...)`).
    var pipelineMetatable: UnsafeRawPointer?
}

extension Runtime {
    var redisState: RedisState { state(RedisState.self) { RedisState() } }
}

/// The `redis` module: `redis.connect(url [, opts])` → a connection (kind `"redis"`) owned
/// by the current scope, with `r:call(cmd, ...)` and `r:pipeline(fn)`. Every wait for the
/// server is bounded (`connect_timeout`, `timeout`) and goes through one `poll` with the
/// stop pipe (`RedisIO`), so a forced stop ends it at once.
package enum RedisBindings: RuntimeModule {
    static let defaultConnectTimeout = 5.0
    static let defaultTimeout = 10.0
    /// The longest timeout accepted (about 11.5 days): a bound that converts to
    /// nanoseconds without overflow, and still a bound.
    static let maxTimeout = 1e6

    package static func install(_ rt: Runtime, _ L: LuaState) {
        HandleBindings.makeMetatable(rt, L, kind: .redis, methods: [
            ("call", call), ("pipeline", pipeline), ("close", HandleBindings.release),
        ])
        // Pipeline objects: a userdata whose user value is the list of commands (encoded
        // command, name, ...) until the pipeline is sent, then false.
        lua_createtable(L, 0, 3)
        Lua.push(L, "redis.pipeline")
        Lua.setField(L, -2, "__name")
        lua_createtable(L, 0, 1)
        Lua.setFunction(L, -1, "call", pipelineCall)
        Lua.setField(L, -2, "__index")
        lua_pushboolean(L, 0)
        Lua.setField(L, -2, "__metatable")
        rt.redisState.pipelineMetatable = lua_topointer(L, -1)
        Lua.setRegistryField(L, "scopelua.redis.pipeline")

        lua_createtable(L, 0, 1)
        Lua.setFunction(L, -1, "connect", connect)
        Bindings.publishModule(L, "redis")
    }

    // MARK: - redis.connect

    /// What `opts` sets besides the endpoint's fields.
    struct Options {
        var connectTimeout = defaultConnectTimeout
        var timeout = defaultTimeout
        var name: [UInt8]?
    }

    /// redis.connect(url [, { connect_timeout = s, timeout = s, db = n, username = u,
    /// password = p, name = client name }]) → a connection. Options override what the URL
    /// says. Every failure raises (a stage that cannot reach its server should fail in
    /// `open`, not carry a nil into `process`).
    static let connect: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let url = Lua.string(L, 1) else {
            Lua.pushTypeError(L, 1, "string")
            return raise
        }
        var endpoint: RedisEndpoint
        switch RedisEndpoint.parse(url) {
        case .success(let parsed): endpoint = parsed
        case .failure(let error):
            Lua.pushError(L, "redis: bad URL \"\(RedisEndpoint.masked(url))\": \(error.reason)")
            return raise
        }
        guard let options = options(L, 2, &endpoint) else { return raise }
        // --sandbox: the host as the URL names it (no name resolution) against --allow-net;
        // a unix socket is a file the connection writes to.
        let denial: String?
        switch endpoint.address {
        case .tcp(let host, let port): denial = rt.permit(.net, host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)")
        case .unix(let path): denial = rt.permit(.write, path)
        }
        if let denial {
            Lua.pushError(L, denial)
            return raise
        }
        if endpoint.username != nil, endpoint.password == nil {
            Lua.pushError(L, "redis: a user name without a password for \(endpoint.label): AUTH needs both")
            return raise
        }
        var login: [RedisReplies.Command] = []
        if let password = endpoint.password {
            login.append(command("AUTH", (endpoint.username.map { [$0] } ?? []) + [password]))
        }
        if let db = endpoint.db, db != 0 { login.append(command("SELECT", [Array(String(db).utf8)])) }
        if let name = options.name { login.append(command("CLIENT SETNAME", [Array("SETNAME".utf8), name], word: "CLIENT")) }

        let connectText = seconds(options.connectTimeout)
        let deadline = sl_monotonic_ns() &+ nanoseconds(options.connectTimeout)
        let context: RedisContext
        switch RedisIO.open(endpoint, deadline: deadline, timeoutText: connectText) {
        case .success(let c): context = c
        case .failure(let failure):
            pushConnectFailure(L, failure, endpoint)
            return raise
        }
        if let failure = RedisIO.login(context, login.map { ($0.name, $0.bytes) }, deadline: deadline, timeoutText: connectText) {
            redisFree(context)
            pushConnectFailure(L, failure, endpoint)
            return raise
        }
        let connection = RedisConnection(context: context, label: endpoint.label,
                                         timeout: nanoseconds(options.timeout), timeoutText: seconds(options.timeout))
        rt.acquire(.redis, connection, L, site: rt.currentSite(L))
        return 1
    }

    /// A command from Swift values (the login's). `word` is what is sent first when the
    /// name has two words.
    static func command(_ name: String, _ arguments: [[UInt8]], word: String? = nil) -> RedisReplies.Command {
        let parts = [Array((word ?? name).utf8)] + arguments
        var bytes = Array("*\(parts.count)\r\n".utf8)
        for part in parts {
            bytes += Array("$\(part.count)\r\n".utf8) + part + Array("\r\n".utf8)
        }
        return RedisReplies.Command(name: name, bytes: bytes)
    }

    static func pushConnectFailure(_ L: LuaState, _ failure: RedisIO.ConnectFailure, _ endpoint: RedisEndpoint) {
        switch failure {
        case .stopped: pushStopError(L)
        case .message(let reason): Lua.pushError(L, "redis: cannot connect to \(endpoint.label): \(reason)")
        }
    }

    /// Reads the options table at `idx` (absent or nil: the defaults), setting the
    /// endpoint's login fields it names. An unknown option is an error (a misspelt
    /// `timeout` would otherwise leave the default in force). Stack: 0 / +1.
    static func options(_ L: LuaState, _ idx: Int32, _ endpoint: inout RedisEndpoint) -> Options? {
        var options = Options()
        switch lua_type(L, idx) {
        case LUA_TNONE, LUA_TNIL: return options
        case LUA_TTABLE: break
        default:
            Lua.pushTypeError(L, idx, "table")
            return nil
        }
        lua_pushnil(L)
        while lua_next(L, idx) != 0 {
            guard lua_type(L, -2) == LUA_TSTRING, let key = Lua.string(L, -2) else {
                sl_pop(L, 2)
                Lua.pushArgError(L, idx, "option names are strings")
                return nil
            }
            var problem: String?
            switch key {
            case "connect_timeout", "timeout":
                if lua_type(L, -1) == LUA_TNUMBER, case let value = lua_tonumberx(L, -1, nil), value > 0, value <= maxTimeout {
                    if key == "timeout" { options.timeout = value } else { options.connectTimeout = value }
                } else {
                    problem = "\(key) must be a number of seconds, more than 0 and at most 1e6"
                }
            case "db":
                if lua_isinteger(L, -1) != 0, case let value = lua_tointegerx(L, -1, nil), value >= 0, value <= Int64(Int32.max) {
                    endpoint.db = value
                } else {
                    problem = "db must be an integer, 0 or more"
                }
            case "username", "password", "name":
                if lua_type(L, -1) == LUA_TSTRING {
                    var len = 0
                    let p = lua_tolstring(L, -1, &len)
                    let bytes = Array(UnsafeRawBufferPointer(start: p, count: p == nil ? 0 : len))
                    switch key {
                    case "username": endpoint.username = bytes
                    case "password": endpoint.password = bytes
                    default: options.name = bytes
                    }
                } else {
                    problem = "\(key) must be a string"
                }
            default:
                problem = "unknown option \"\(key)\" (known: connect_timeout, timeout, db, username, password, name)"
            }
            sl_pop(L, 1)
            if let problem {
                sl_pop(L, 1)
                Lua.pushArgError(L, idx, problem)
                return nil
            }
        }
        return options
    }

    /// Seconds as nanoseconds; `s` is in (0, 1e6], so the product fits.
    static func nanoseconds(_ s: Double) -> UInt64 { UInt64(s * 1e9) }

    /// `0.2 s`, `10 s`.
    static func seconds(_ s: Double) -> String {
        if s == s.rounded(), let whole = Int64(exactly: s) { return "\(whole) s" }
        return "\(s) s"
    }

    // MARK: - r:call

    /// The open, unbroken connection at index 1, or an error pushed.
    static func connection(_ rt: Runtime, _ L: LuaState) -> (RedisConnection, RedisContext)? {
        guard let h = HandleBindings.checkOpen(rt, L, 1, kind: .redis) else { return nil }
        guard let connection = h.pointee.resource as? RedisConnection else {
            Lua.pushTypeError(L, 1, ResourceKind.redis.name)
            return nil
        }
        guard let context = connection.context else {
            let why = connection.broken ?? "it was closed"
            Lua.pushError(L, "redis: the connection to \(connection.url) is closed after an earlier failure (\(why)): open a new one")
            return nil
        }
        return (connection, context)
    }

    /// r:call(cmd, ...) → the reply as a Lua value; an error reply raises
    /// `redis: <message> (command CMD)`.
    static let call: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard let (connection, context) = connection(rt, L),
              let command = RedisReplies.encode(L, first: 2, last: lua_gettop(L)) else { return raise }
        let deadline = sl_monotonic_ns() &+ connection.timeout
        if let failure = RedisIO.send(context, command.bytes, deadline: deadline) {
            pushFailure(L, failure, connection, command: command.name)
            return raise
        }
        switch RedisIO.receive(context, deadline: deadline) {
        case .failure(let failure):
            pushFailure(L, failure, connection, command: command.name)
            return raise
        case .success(let reply):
            defer { freeReplyObject(reply) }
            if reply.pointee.type == REDIS_REPLY_ERROR {
                Lua.pushError(L, "redis: \(RedisReplies.text(reply)) (command \(command.name))")
                return raise
            }
            Lua.reserve(L, RedisReplies.stackNeeded, for: "a Redis reply")
            RedisReplies.push(L, reply, top: true)
            return 1
        }
    }

    /// A failure while talking to the server: the connection breaks (its socket is closed
    /// now), and the error names the command, the server and, for a timeout, the time.
    static func pushFailure(_ L: LuaState, _ failure: RedisFailure, _ connection: RedisConnection, command: String) {
        switch failure {
        case .stopped:
            connection.markBroken("a stop interrupted \(command)")
            pushStopError(L)
        case .timedOut:
            let reason = "no reply to \(command) within \(connection.timeoutText) (timeout)"
            connection.markBroken(reason)
            Lua.pushError(L, "redis: \(reason) from \(connection.url); the connection is closed")
        case .lost(let problem):
            connection.markBroken("lost during \(command): \(problem)")
            Lua.pushError(L, "redis: connection to \(connection.url) lost during \(command): \(problem)")
        }
    }

    /// The run's stop error ("stopped by SIGTERM (forced)") at the caller's line.
    static func pushStopError(_ L: LuaState) {
        sl_stop_pusherror(L)
        let message = Lua.string(L, -1) ?? "stopped"
        sl_pop(L, 1)
        Lua.pushError(L, message)
    }

    // MARK: - r:pipeline

    /// r:pipeline(fn) → the list of replies. `fn(p)` queues commands with `p:call(...)`;
    /// when it returns they are sent in one write and their replies read in order. An
    /// error reply is `{err = message}` in its slot (the other commands ran: raising
    /// would hide their replies), a nil reply `false`; a failure of the connection raises.
    /// When `fn` raises, nothing is sent and its error goes on.
    static let pipeline: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        guard connection(rt, L) != nil else { return raise }
        guard lua_type(L, 2) == LUA_TFUNCTION else {
            Lua.pushTypeError(L, 2, "function")
            return raise
        }
        lua_settop(L, 2)
        _ = lua_newuserdatauv(L, 0, 1)  // 3: p
        lua_createtable(L, 16, 0)
        lua_setiuservalue(L, 3, 1)
        Lua.getRegistryField(L, "scopelua.redis.pipeline")
        _ = lua_setmetatable(L, 3)
        lua_pushcclosure(L, sl_capturetraceback, 0)  // 4: the message handler
        lua_pushvalue(L, 2)
        lua_pushvalue(L, 3)
        let status = sl_pcall(L, 1, 0, 4)
        // The commands (5), and p sent: a p:call from now on is an error.
        _ = lua_getiuservalue(L, 3, 1)
        lua_pushboolean(L, 0)
        lua_setiuservalue(L, 3, 1)
        if status != LUA_OK {
            // Stack: 4 msgh, 5 error, 6 commands; 7 the traceback from where the function
            // failed, which the re-raise keeps.
            if sl_taketraceback(L, 5) == 0 { lua_pushnil(L) }
            lua_pushvalue(L, 5)
            return ScopeBindings.raising(L, traceback: 7)
        }
        lua_copy(L, -1, 2)  // 2: the commands
        lua_settop(L, 2)
        // The function may have released the connection, or broken it with a call of its own.
        guard let (connection, context) = connection(rt, L) else { return raise }
        let count = Int(truncatingIfNeeded: lua_rawlen(L, 2) / 2)  // a table's length fits
        var request: [UInt8] = []
        var names: [String] = []
        names.reserveCapacity(count)
        for i in 0..<count {
            lua_rawgeti(L, 2, lua_Integer(2 * i + 1))
            var len = 0
            let p = lua_tolstring(L, -1, &len)
            request.append(contentsOf: UnsafeRawBufferPointer(start: p, count: p == nil ? 0 : len))
            sl_pop(L, 1)
            lua_rawgeti(L, 2, lua_Integer(2 * i + 2))
            names.append(Lua.string(L, -1) ?? "?")
            sl_pop(L, 1)
        }
        lua_createtable(L, Int32(clamping: count), 0)  // 3: the replies
        guard count > 0 else { return 1 }
        var deadline = sl_monotonic_ns() &+ connection.timeout
        if let failure = RedisIO.send(context, request, deadline: deadline) {
            pushFailure(L, failure, connection, command: "a pipeline of \(count) commands")
            return raise
        }
        Lua.reserve(L, RedisReplies.stackNeeded, for: "a Redis reply")
        for i in 0..<count {
            switch RedisIO.receive(context, deadline: deadline) {
            case .failure(let failure):
                pushFailure(L, failure, connection, command: "\(names[i]) (command \(i + 1) of \(count) in a pipeline)")
                return raise
            case .success(let reply):
                RedisReplies.push(L, reply, top: false)
                freeReplyObject(reply)
                lua_rawseti(L, 3, lua_Integer(i) + 1)
            }
            // Each reply may take the whole timeout after the one before it.
            deadline = sl_monotonic_ns() &+ connection.timeout
        }
        return 1
    }

    /// p:call(cmd, ...) → the position its reply will have in the pipeline's list. Only
    /// inside the function given to `r:pipeline`.
    static let pipelineCall: SwiftLuaFunction = { L in
        let (rt, L) = Runtime.from(L)
        var isPipeline = false
        if lua_type(L, 1) == LUA_TUSERDATA, lua_getmetatable(L, 1) != 0 {
            isPipeline = lua_topointer(L, -1) == rt.redisState.pipelineMetatable
            sl_pop(L, 1)
        }
        guard isPipeline else {
            Lua.pushTypeError(L, 1, "redis.pipeline")
            return raise
        }
        let top = lua_gettop(L)
        guard let command = RedisReplies.encode(L, first: 2, last: top) else { return raise }
        guard lua_getiuservalue(L, 1, 1) == LUA_TTABLE else {
            Lua.pushError(L, "redis: this pipeline was already sent: use p:call only inside the function given to r:pipeline")
            return raise
        }
        let list = top + 1
        let n = lua_Integer(truncatingIfNeeded: lua_rawlen(L, list))  // a table's length fits
        command.bytes.withUnsafeBytes { buf in
            _ = lua_pushlstring(L, buf.baseAddress?.assumingMemoryBound(to: CChar.self), buf.count)
        }
        lua_rawseti(L, list, n + 1)
        Lua.push(L, command.name)
        lua_rawseti(L, list, n + 2)
        lua_pushinteger(L, n / 2 + 1)
        return 1
    }
}
