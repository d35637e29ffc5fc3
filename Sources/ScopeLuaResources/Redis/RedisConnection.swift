import CHiredis
import CLua
import CScopeLua
import ScopeLuaCore

#if canImport(Glibc)
import Glibc
#endif

/// A hiredis context, owned by whoever holds it (a `RedisConnection`, or `connect`
/// while it logs in).
typealias RedisContext = UnsafeMutablePointer<redisContext>

/// A connection to a Redis server (`redis.connect`, kind `"redis"`), owned by the scope
/// current when it was opened. Releasing it frees the hiredis context (and closes the
/// socket). A connection that failed (a timeout, a lost server, a forced stop in the
/// middle of a command) is *broken*: its socket is closed at once, since the replies it
/// still owes would answer the next command, and every later call says why.
final class RedisConnection: Resource {
    private(set) var context: RedisContext?
    /// Nanoseconds one command may take, from sending it to its reply (`opts.timeout`).
    let timeout: UInt64
    /// The timeout as messages show it (`0.2 s`).
    let timeoutText: String
    /// Why the connection cannot be used any more, once it broke.
    private(set) var broken: String?

    init(context: RedisContext, label: String, timeout: UInt64, timeoutText: String) {
        self.context = context
        self.timeout = timeout
        self.timeoutText = timeoutText
        super.init(label: label)
    }

    /// The URL it connects to, without the password.
    var url: String { label ?? "redis" }

    /// Closes the socket now and remembers why: the handle stays open (its scope still
    /// releases it), but every call on it fails with `reason`.
    func markBroken(_ reason: String) {
        broken = reason
        if let context { redisFree(context) }
        context = nil
    }

    override func close(_ runtime: Runtime, _ L: LuaState, _ handle: Handle, error errIndex: Int32) -> Bool {
        if let context { redisFree(context) }
        context = nil
        return true
    }
}

/// What went wrong while talking to the server (an error *reply* is not one of these:
/// the connection stays usable after it).
enum RedisFailure: Error {
    /// The deadline passed before the server answered.
    case timedOut
    /// The run's stop was forced while waiting.
    case stopped
    /// The socket failed, the server closed it, or it sent what is not Redis' protocol.
    case lost(String)
}

/// Talking to a server without ever blocking in hiredis: the socket is non-blocking,
/// every wait is one `poll` on it and on the stop pipe with a deadline
/// (ARCHITECTURE.md, "Waiting on a server"). hiredis formats nothing here and writes
/// nothing: it resolves and connects (`redisConnectNonBlock`), reads
/// (`redisBufferRead`) and parses (`redisGetReplyFromReader`). Writes go through
/// `send(MSG_NOSIGNAL)`, so a server gone away is an error, not a SIGPIPE that ends the
/// process.
enum RedisIO {
    /// While a graceful stop is under way the stop pipe stays readable, so a wait polls
    /// the socket alone in slices this long, to notice the stop being forced.
    static let stopSlice: UInt64 = 50_000_000

    enum Wait {
        case ready(Int16)
        case failed(RedisFailure)
    }

    /// Waits until `fd` has one of `events`, the deadline (monotonic ns) passes, or the
    /// run's stop is forced. A graceful stop does not end the wait (the call finishes;
    /// a pipeline stops between events).
    static func wait(_ fd: Int32, _ events: Int16, deadline: UInt64) -> Wait {
        while true {
            if sl_stop_forced() != 0 { return .failed(.stopped) }
            let now = sl_monotonic_ns()
            if now >= deadline { return .failed(.timedOut) }
            let graceful = sl_stop_signal() != 0
            var remaining = deadline - now
            if graceful { remaining = min(remaining, stopSlice) }
            // Rounded up, so that a wait never ends just before the deadline.
            let ms = Int32(clamping: remaining / 1_000_000 + (remaining % 1_000_000 == 0 ? 0 : 1))
            var fds = [pollfd(fd: fd, events: events, revents: 0),
                       pollfd(fd: graceful ? -1 : sl_stop_fd(), events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, ms)  // a negative descriptor is ignored
            if n < 0 {
                if errno == EINTR { continue }
                return .failed(.lost("poll: \(String(cString: strerror(errno)))"))
            }
            if fds[0].revents != 0 { return .ready(fds[0].revents) }
        }
    }

    /// hiredis' description of the context's error.
    static func errorText(_ c: RedisContext) -> String {
        String(cString: scopelua_redis_errstr(c))
    }

    /// Sends all of `bytes`. What the server sends meanwhile is read into the context's
    /// reader, so a long pipeline cannot stall with both sides waiting to write.
    static func send(_ c: RedisContext, _ bytes: [UInt8], deadline: UInt64) -> RedisFailure? {
        bytes.withUnsafeBytes { buf -> RedisFailure? in
            guard let base = buf.baseAddress else { return nil }
            var offset = 0
            while offset < buf.count {
                let n = Glibc.send(c.pointee.fd, base + offset, buf.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 {
                    offset += n
                    continue
                }
                let err = errno
                if n < 0, err == EINTR { continue }
                guard n < 0, err == EAGAIN || err == EWOULDBLOCK else {
                    return .lost(n < 0 ? String(cString: strerror(err)) : "the socket accepted nothing")
                }
                switch wait(c.pointee.fd, Int16(POLLOUT | POLLIN), deadline: deadline) {
                case .failed(let failure):
                    return failure
                case .ready(let revents):
                    if revents & Int16(POLLIN) != 0, redisBufferRead(c) != REDIS_OK { return .lost(errorText(c)) }
                }
            }
            return nil
        }
    }

    /// The next reply (the caller frees it with `freeReplyObject`).
    static func receive(_ c: RedisContext, deadline: UInt64) -> Result<UnsafeMutablePointer<redisReply>, RedisFailure> {
        while true {
            var raw: UnsafeMutableRawPointer?
            if redisGetReplyFromReader(c, &raw) != REDIS_OK { return .failure(.lost(errorText(c))) }
            if let raw { return .success(raw.assumingMemoryBound(to: redisReply.self)) }
            switch wait(c.pointee.fd, Int16(POLLIN), deadline: deadline) {
            case .failed(let failure):
                return .failure(failure)
            case .ready:
                if redisBufferRead(c) != REDIS_OK { return .failure(.lost(errorText(c))) }
            }
        }
    }

    enum ConnectFailure: Error {
        case message(String)
        case stopped
    }

    /// Opens a socket to `endpoint` and waits for it to connect, until `deadline`.
    static func open(_ endpoint: RedisEndpoint, deadline: UInt64, timeoutText: String) -> Result<RedisContext, ConnectFailure> {
        let made: RedisContext?
        switch endpoint.address {
        case .tcp(let host, let port): made = redisConnectNonBlock(host, port)
        case .unix(let path): made = redisConnectUnixNonBlock(path)
        }
        guard let c = made else { return .failure(.message("out of memory")) }
        if c.pointee.err != 0 {
            let reason = errorText(c)
            redisFree(c)
            return .failure(.message(reason))
        }
        switch wait(c.pointee.fd, Int16(POLLOUT), deadline: deadline) {
        case .failed(.stopped):
            redisFree(c)
            return .failure(.stopped)
        case .failed(.timedOut):
            redisFree(c)
            return .failure(.message("no answer within \(timeoutText) (connect_timeout)"))
        case .failed(.lost(let reason)):
            redisFree(c)
            return .failure(.message(reason))
        case .ready:
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            if getsockopt(c.pointee.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 { err = errno }
            guard err == 0 else {
                redisFree(c)
                return .failure(.message(String(cString: strerror(err))))
            }
            return .success(c)
        }
    }

    /// Sends the commands in one write and reads their replies in order (until
    /// `deadline`): the login (AUTH, SELECT, CLIENT SETNAME). Returns nil, or why it
    /// failed: the first error reply (named by its command), or the failure.
    static func login(_ c: RedisContext, _ commands: [(name: String, bytes: [UInt8])], deadline: UInt64,
                      timeoutText: String) -> ConnectFailure? {
        guard !commands.isEmpty else { return nil }
        if let failure = send(c, commands.flatMap(\.bytes), deadline: deadline) {
            return describe(failure, during: commands[0].name, timeoutText: timeoutText)
        }
        var firstError: String?
        for command in commands {
            switch receive(c, deadline: deadline) {
            case .failure(let failure):
                return describe(failure, during: command.name, timeoutText: timeoutText)
            case .success(let reply):
                if firstError == nil, reply.pointee.type == REDIS_REPLY_ERROR {
                    firstError = "\(command.name) failed: \(RedisReplies.text(reply))"
                }
                freeReplyObject(reply)
            }
        }
        return firstError.map { .message($0) }
    }

    private static func describe(_ failure: RedisFailure, during name: String, timeoutText: String) -> ConnectFailure {
        switch failure {
        case .stopped: return .stopped
        case .timedOut: return .message("no reply to \(name) within \(timeoutText) (connect_timeout)")
        case .lost(let reason): return .message("\(reason) (during \(name))")
        }
    }
}

/// The hiredis library scopelua is linked with.
package enum HiredisLibrary {
    /// `0.14.1`. hiredis has no call that reports its version at run time, so this is the
    /// header's (HIREDIS_MAJOR/MINOR/PATCH); the loader holds the library to it, since
    /// Debian's soname carries the major and minor version (`libhiredis.so.0.14`).
    package static var version: String { "\(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)" }
}
