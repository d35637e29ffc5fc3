import CHiredis
import CScopeLua
import ScopeLuaCore

#if canImport(Glibc)
import Glibc
#endif

/// A connection the engine itself holds (the Redis stream source and sink): no handle,
/// no scope, replies as Swift values. It talks through `RedisIO` like a script's
/// connection, so every wait is bounded and a forced stop ends it.
package final class RedisClient {
    /// A reply.
    package indirect enum Value: Equatable {
        case string([UInt8])
        case status(String)
        case integer(Int64)
        case null
        case array([Value])
        /// An error reply (the connection stays usable).
        case error(String)

        /// A bulk or status reply as text.
        package var text: String? {
            switch self {
            case .string(let b): return String(decoding: b, as: UTF8.self)
            case .status(let s): return s
            default: return nil
            }
        }
    }

    /// Why a call failed (the connection is closed then).
    package struct Problem: Error, CustomStringConvertible {
        package let message: String
        package init(_ message: String) { self.message = message }
        package var description: String { message }
    }

    private var context: RedisContext?
    /// The server, as messages show it (no password).
    package let label: String
    private let timeout: UInt64
    private let timeoutText: String

    private init(context: RedisContext, label: String, timeout: UInt64, timeoutText: String) {
        self.context = context
        self.label = label
        self.timeout = timeout
        self.timeoutText = timeoutText
    }

    deinit { close() }

    /// Connects and logs in (AUTH, SELECT); nil and why not.
    package static func connect(_ endpoint: RedisEndpoint, connectTimeout: Double, timeout: Double) -> Result<RedisClient, Problem> {
        let connectText = RedisBindings.seconds(connectTimeout)
        let deadline = sl_monotonic_ns() &+ RedisBindings.nanoseconds(connectTimeout)
        var login: [RedisReplies.Command] = []
        if let password = endpoint.password {
            login.append(RedisBindings.command("AUTH", (endpoint.username.map { [$0] } ?? []) + [password]))
        }
        if let db = endpoint.db, db != 0 { login.append(RedisBindings.command("SELECT", [Array(String(db).utf8)])) }
        let context: RedisContext
        switch RedisIO.open(endpoint, deadline: deadline, timeoutText: connectText) {
        case .success(let c): context = c
        case .failure(.stopped): return .failure(Problem("cannot connect to \(endpoint.label): the run was stopped"))
        case .failure(.message(let reason)): return .failure(Problem("cannot connect to \(endpoint.label): \(reason)"))
        }
        switch RedisIO.login(context, login.map { ($0.name, $0.bytes) }, deadline: deadline, timeoutText: connectText) {
        case nil: break
        case .stopped?:
            redisFree(context)
            return .failure(Problem("cannot connect to \(endpoint.label): the run was stopped"))
        case .message(let reason)?:
            redisFree(context)
            return .failure(Problem("cannot connect to \(endpoint.label): \(reason)"))
        }
        return .success(RedisClient(context: context, label: endpoint.label, timeout: RedisBindings.nanoseconds(timeout),
                                    timeoutText: RedisBindings.seconds(timeout)))
    }

    package func close() {
        if let context { redisFree(context) }
        context = nil
    }

    /// Replies owed by commands sent with `sendOwingReplies`, read before the next call.
    private var owed = 0

    /// Sends commands whose replies are not waited for now: they are read (and an error
    /// reply among them reported) by `drain`, which every `call` runs first.
    package func sendOwingReplies(_ commands: [[[UInt8]]]) -> String? {
        if let failure = send(commands) { return failure }
        owed += commands.count
        return nil
    }

    /// Reads the replies owed; nil, or the first error among them.
    package func drain() -> String? {
        guard owed > 0 else { return nil }
        let n = owed
        owed = 0
        switch receive(n) {
        case .failure(let p): return p.message
        case .success(let replies):
            for case .error(let message) in replies { return "\(label): \(message)" }
            return nil
        }
    }

    /// One command and its reply. `wait`: how long the server may take beyond the
    /// connection's timeout (a blocking read's own BLOCK).
    package func call(_ parts: [[UInt8]], wait: UInt64 = 0) -> Result<Value, Problem> {
        if let failure = drain() { return .failure(Problem(failure)) }
        if let failure = send([parts]) { return .failure(Problem(failure)) }
        return receive(1, wait: wait).map { $0[0] }
    }

    /// Why the connection failed last (it is closed then).
    private(set) var lastFailure: String?

    /// Sends commands in one write (a pipeline); their replies are read with `receive`.
    /// Nil, or why it failed (the connection is then closed).
    @discardableResult
    package func send(_ commands: [[[UInt8]]]) -> String? {
        guard let context else { return lastFailure ?? "the connection to \(label) is closed" }
        var bytes: [UInt8] = []
        for parts in commands {
            bytes += Array("*\(parts.count)\r\n".utf8)
            for part in parts { bytes += Array("$\(part.count)\r\n".utf8) + part + [13, 10] }
        }
        if let failure = RedisIO.send(context, bytes, deadline: sl_monotonic_ns() &+ timeout) {
            return broke(failure, "sending")
        }
        return nil
    }

    /// The next `count` replies, in order.
    package func receive(_ count: Int, wait: UInt64 = 0) -> Result<[Value], Problem> {
        guard let context else { return .failure(Problem(lastFailure ?? "the connection to \(label) is closed")) }
        var values: [Value] = []
        values.reserveCapacity(count)
        let deadline = sl_monotonic_ns() &+ timeout &+ wait
        for _ in 0..<count {
            switch RedisIO.receive(context, deadline: deadline) {
            case .failure(let failure): return .failure(Problem(broke(failure, "waiting for a reply")))
            case .success(let reply):
                values.append(Self.value(reply))
                freeReplyObject(reply)
            }
        }
        return .success(values)
    }

    private func broke(_ failure: RedisFailure, _ doing: String) -> String {
        let why: String
        switch failure {
        case .timedOut: why = "no reply from \(label) within \(timeoutText) (timeout) while \(doing)"
        case .stopped: why = "the run was stopped while \(doing) (\(label))"
        case .lost(let reason): why = "the connection to \(label) was lost while \(doing): \(reason)"
        }
        close()
        lastFailure = why
        return why
    }

    static func value(_ r: UnsafeMutablePointer<redisReply>) -> Value {
        switch r.pointee.type {
        case REDIS_REPLY_INTEGER: return .integer(r.pointee.integer)
        case REDIS_REPLY_NIL: return .null
        case REDIS_REPLY_ERROR: return .error(RedisReplies.text(r))
        case REDIS_REPLY_STATUS: return .status(RedisReplies.text(r))
        case REDIS_REPLY_ARRAY:
            guard r.pointee.elements > 0, let elements = r.pointee.element else { return .array([]) }
            return .array((0..<r.pointee.elements).map { i in elements[i].map(value) ?? .null })
        default: return .string(Array(RedisReplies.bytes(r)))
        }
    }
}
