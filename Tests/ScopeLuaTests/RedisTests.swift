import Foundation
import Testing
@testable import ScopeLua
@testable import ScopeLuaResources

/// `redis.connect`: connections (kind "redis") owned by a scope, against a real
/// redis-server each test starts for itself (`RedisServer`) and stops when it ends.
@Suite(.timeLimit(testTimeLimit)) struct RedisTests {
    /// `show(v)`: a reply as text, types visible: `{1,{2,x},false}`, `err=...` for
    /// `{err = ...}`, `nil`.
    static let show = """
        local function show(v)
          if type(v) == "table" then
            if v.err then return "err=" .. v.err end
            local parts = {}
            for i = 1, #v do parts[i] = show(v[i]) end
            return "{" .. table.concat(parts, ",") .. "}"
          end
          return tostring(v)
        end

        """

    // MARK: - Replies

    @Test func eachReplyTypeBecomesTheLuaValueItSays() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let run = runLua(Self.show + """
            local r = redis.connect("\(server.url)")
            local out = {}
            local function put(v) out[#out+1] = (math.type(v) or type(v)) .. ":" .. show(v) end
            put(r:call("SET", "s", "text"))                 -- status
            put(r:call("PING"))
            put(r:call("GET", "s"))                         -- bulk
            put(r:call("GET", "absent"))                    -- nil bulk
            put(r:call("BLPOP", "absent", 0.01))            -- nil array
            put(r:call("INCRBY", "n", 41))                  -- integer
            put(r:call("INCRBY", "n", -42))
            r:call("SET", "i", math.maxinteger - 1)
            put(r:call("INCR", "i"))
            r:call("SET", "f", 0.1); put(r:call("GET", "f"))     -- floats: full precision, shortest
            r:call("SET", "g", 1/3); put(r:call("GET", "g"))
            r:call("SET", "h", 2^63); put(r:call("GET", "h"))
            r:call("SET", "w", 2.0); put(r:call("GET", "w"))
            put(r:call("INCRBYFLOAT", "x", 2.5e-3))
            put(r:call("MGET", "s", "absent", "n"))         -- array with a nil
            put(r:call("LRANGE", "absent", 0, -1))          -- empty array
            put(r:call("EVAL", "return {1, {2, {'x', false}}, 'y', false}", 0))  -- nested
            put(r:call("EVAL", "return {1, redis.error_reply('boom')}", 0))      -- error inside
            put(r:call("hget", "nohash", "f"))              -- any case
            return table.concat(out, " ")
            """)
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        #expect(run.text == "string:OK string:PONG string:text nil:nil nil:nil integer:41 integer:-1 "
            + "integer:9223372036854775807 string:0.1 string:0.3333333333333333 string:9.223372036854776e+18 "
            + "string:2 string:0.0025 table:{text,false,-1} table:{} table:{1,{2,{x,false}},y,false} "
            + "table:{1,err=ERR boom} nil:nil")
    }

    @Test func bulkStringsAreBinarySafe() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let run = runLua("""
            local r = redis.connect("\(server.url)")
            local bytes = {}
            for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
            local all = table.concat(bytes) .. "\\r\\n$3\\r\\n*1\\r\\n"
            r:call("SET", all, all)                       -- as key and as value
            local big = string.rep("ab\\0\\r\\n", 200000)  -- 1 MB: many reads
            r:call("SET", "big", big)
            r:call("SET", "empty", "")
            return r:call("GET", all) == all, r:call("STRLEN", all), r:call("GET", "big") == big,
                   r:call("GET", "empty"), r:call("KEYS", "\\0*")[1] == all
            """)
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        #expect(run.values == [.boolean(true), .integer(266), .boolean(true), .string(""), .boolean(true)])
    }

    /// An error reply is a Lua error with Redis' message, the command and the script
    /// line; the connection stays usable.
    @Test func anErrorReplyRaisesWithRedisMessageAndTheLine() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let run = runLua("""
            local r = redis.connect("\(server.url)")
            r:call("SET", "k", "v")
            local ok, err = pcall(function() return r:call("hset", "k", "f", "v") end)
            local ok2, err2 = pcall(function() return r:call("NOPE", "x") end)
            return err, err2, r:call("GET", "k")
            """)
        #expect(run.error == nil)
        #expect(run.values.first == .string("test:3: redis: WRONGTYPE Operation against a key holding the wrong kind of value (command HSET)"))
        #expect(run.values.dropFirst().first == .string("test:4: redis: ERR unknown command 'NOPE', with args beginning with: 'x'  (command NOPE)"))
        #expect(run.values.last == .string("v"))
        let uncaught = runLua("local r = redis.connect(\"\(server.url)\")\nr:call(\"INCR\", \"k\")\nr:call(\"INCR\", \"x\")")
        #expect(uncaught.error?.message == "test:2: redis: ERR value is not an integer or out of range (command INCR)")
    }

    @Test func argumentsAreStringsAndNumbers() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        func error(_ source: String) -> String? {
            runLua("local r = redis.connect(\"\(server.url)\")\n" + source).error?.message
        }
        #expect(error("r:call('SET', 'k', true)")
                == "test:2: bad argument #3 to 'call' (cannot send a boolean to Redis: arguments are strings and numbers)")
        #expect(error("r:call('SET', {}, 'v')")
                == "test:2: bad argument #2 to 'call' (cannot send a table to Redis: arguments are strings and numbers)")
        #expect(error("r:call('SET', 'k', nil)")
                == "test:2: bad argument #3 to 'call' (cannot send a nil to Redis: arguments are strings and numbers)")
        #expect(error("r:call()") == "test:2: bad argument #1 to 'call' (the command's name expected, got no value)")
        #expect(error("r:call(1)") == "test:2: bad argument #1 to 'call' (the command's name expected, got number)")
        #expect(error("r:pipeline(function(p) p:call('SET', 'k', print) end)")
                == "test:2: bad argument #3 to 'call' (cannot send a function to Redis: arguments are strings and numbers)")
        #expect(error("r:pipeline('x')") == "test:2: bad argument #1 to 'pipeline' (function expected, got string)")
        #expect(error("redis.connect('\(server.url)', { timout = 1 })")
                == "test:2: bad argument #2 to 'connect' (unknown option \"timout\" (known: connect_timeout, timeout, db, username, password, name))")
        #expect(error("redis.connect('\(server.url)', { timeout = 0 })")
                == "test:2: bad argument #2 to 'connect' (timeout must be a number of seconds, more than 0 and at most 1e6)")
        #expect(error("redis.connect('\(server.url)', { connect_timeout = 1/0 })")
                == "test:2: bad argument #2 to 'connect' (connect_timeout must be a number of seconds, more than 0 and at most 1e6)")
        #expect(error("redis.connect('\(server.url)', { db = 1.5 })")
                == "test:2: bad argument #2 to 'connect' (db must be an integer, 0 or more)")
        #expect(error("redis.connect('\(server.url)', { name = 7 })")
                == "test:2: bad argument #2 to 'connect' (name must be a string)")
        #expect(error("redis.connect('\(server.url)', 5)") == "test:2: bad argument #2 to 'connect' (table expected, got number)")
        #expect(error("redis.connect()") == "test:2: bad argument #1 to 'connect' (string expected, got no value)")
        // A client name Redis refuses fails the connect with Redis' reason.
        #expect(error("redis.connect('\(server.url)', { name = 'a b' })")
                == "test:2: redis: cannot connect to \(server.url): CLIENT SETNAME failed: ERR Client names cannot contain spaces, newlines or special characters.")
    }

    // MARK: - Pipelines

    @Test func aPipelineReturnsTheRepliesInOrder() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let run = runLua(Self.show + """
            local r = redis.connect("\(server.url)")
            local positions = {}
            local replies = r:pipeline(function(p)
              positions[#positions + 1] = p:call("SET", "a", 1)
              positions[#positions + 1] = p:call("INCR", "a")
              positions[#positions + 1] = p:call("HSET", "a", "f", 1)     -- an error reply
              positions[#positions + 1] = p:call("GET", "absent")         -- nil: false
              positions[#positions + 1] = p:call("LRANGE", "absent", 0, -1)
              r:call("SET", "b", "direct")                                -- goes at once
              positions[#positions + 1] = p:call("GET", "b")
            end)
            local empty = r:pipeline(function(p) end)
            return show(replies), table.concat(positions, ","), #replies, show(empty)
            """)
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        #expect(run.values == [
            .string("{OK,2,err=WRONGTYPE Operation against a key holding the wrong kind of value,false,{},direct}"),
            .string("1,2,3,4,5,6"), .integer(6), .string("{}"),
        ])
    }

    /// When the function raises, nothing is sent and its error goes on with its line; a
    /// pipeline object is good only inside its function.
    @Test func aPipelineWhoseFunctionFailsSendsNothing() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let run = runLua("""
            local r = redis.connect("\(server.url)")
            local ok, err = pcall(r.pipeline, r, function(p)
              p:call("SET", "never", 1)
              error("changed my mind")
            end)
            local saved
            r:pipeline(function(p) saved = p end)
            local ok2, err2 = pcall(function() saved:call("PING") end)
            local ok3, err3 = pcall(function() r:pipeline(function(p) r:close() ; p:call("PING") end) end)
            return err, err2, err3
            """)
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        #expect(run.values.count == 3)
        #expect(run.values.first == .string("test:4: changed my mind"))
        #expect(run.values.dropFirst().first
                == .string("test:8: redis: this pipeline was already sent: use p:call only inside the function given to r:pipeline"))
        #expect(run.values.last?.description.hasPrefix("test:9: redis#1 \"\(server.url)\" used after release (released at test:9)") == true,
                "\(run.values)")
        #expect(try server.cli("EXISTS", "never") == "0")
    }

    // MARK: - Timeouts and failures

    /// A command without a reply within `timeout` fails naming the command and the time;
    /// the connection is closed then (the late reply would answer the next command), and
    /// every later call says why.
    @Test func aTimeoutNamesTheCommandAndBreaksTheConnection() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        var sockets = -1
        let run = runLua("""
            -- Globals: their handles stay open until the runtime closes.
            r = redis.connect("\(server.url)", { timeout = 0.2, name = "slow" })
            healthy = redis.connect("\(server.url)")
            local started = timer.now()
            local ok, err = pcall(function() return r:call("BLPOP", "empty", 5) end)
            local took = timer.now() - started
            local ok2, err2 = pcall(function() return r:call("PING") end)
            p = redis.connect("\(server.url)", { timeout = 0.2 })
            local ok3, err3 = pcall(function()
              return p:pipeline(function(q) q:call("PING"); q:call("BLPOP", "empty", 5) end)
            end)
            return err, err2, err3, took >= 0.2 and took < 5, r:is_open() and p:is_open()
            """, beforeClose: { _ in sockets = openSockets(toPort: server.port) })
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        #expect(run.values == [
            .string("test:5: redis: no reply to BLPOP within 0.2 s (timeout) from \(server.url); the connection is closed"),
            .string("test:7: redis: the connection to \(server.url) is closed after an earlier failure (no reply to BLPOP within 0.2 s (timeout)): open a new one"),
            .string("test:10: redis: no reply to BLPOP (command 2 of 2 in a pipeline) within 0.2 s (timeout) from \(server.url); the connection is closed"),
            .boolean(true), .boolean(true),
        ])
        // The sockets were closed at the timeouts, while the handles were still open: the
        // healthy connection's is the only one left.
        #expect(sockets == 1)
        #expect(try waitUntil { try server.clients().isEmpty })
    }

    /// A server that accepts the connection but never answers: the command times out;
    /// with a password, the login does, within connect_timeout. A server whose listen
    /// queue is full never completes the connect: connect_timeout.
    @Test func aServerThatNeverAnswersTimesOut() throws {
        let (listener, port) = try loopbackListener(backlog: 8)
        defer { close(listener) }
        let url = "redis://127.0.0.1:\(port)"
        let run = runLua("""
            local r = redis.connect("\(url)", { timeout = 0.2 })
            local ok, err = pcall(function() return r:call("PING") end)
            local ok2, err2 = pcall(function() return redis.connect("redis://:pw@127.0.0.1:\(port)", { connect_timeout = 0.3 }) end)
            return err, err2
            """)
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        #expect(run.values == [
            .string("test:2: redis: no reply to PING within 0.2 s (timeout) from \(url); the connection is closed"),
            .string("test:3: redis: cannot connect to \(url): no reply to AUTH within 0.3 s (connect_timeout)"),
        ])
        // Fill the listen queue (the kernel then drops further connection requests).
        let (full, fullPort) = try loopbackListener(backlog: 0)
        defer { close(full) }
        let first = loopbackConnect(port: fullPort, blocking: true)
        let second = loopbackConnect(port: fullPort, blocking: false)
        defer { close(first); close(second) }
        let started = Date()
        let refused = runLua("redis.connect('redis://127.0.0.1:\(fullPort)', { connect_timeout = 0.3 })")
        #expect(refused.error?.message == "test:1: redis: cannot connect to redis://127.0.0.1:\(fullPort): no answer within 0.3 s (connect_timeout)")
        #expect(Date().timeIntervalSince(started) < 20)
    }

    @Test func aRefusedConnectionNamesTheURL() throws {
        let (fd, port) = try loopbackListener(backlog: 1)
        close(fd)  // nothing listens there now
        let run = runLua("redis.connect('redis://app:secret@127.0.0.1:\(port)/3')")
        #expect(run.error?.message == "test:1: redis: cannot connect to redis://app@127.0.0.1:\(port)/3: Connection refused")
        let dir = temporaryDirectory()
        let unix = runLua("redis.connect('unix://\(dir)/none.sock')")
        #expect(unix.error?.message == "test:1: redis: cannot connect to unix://\(dir)/none.sock: No such file or directory")
    }

    /// A server that hangs up: the command fails naming it, the connection is broken;
    /// writing into the dead socket is an error, never a SIGPIPE that ends the process
    /// (a plain script, where nothing ignores SIGPIPE).
    @Test func aServerThatHangsUpIsAnErrorNotASignal() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = temporaryDirectory()
        write("""
            local victim = redis.connect("\(server.url)", { name = "victim" })
            local killer = redis.connect("\(server.url)")
            local function attempt(...)
              local ok, err = pcall(victim.call, victim, ...)
              print(ok, err)
            end
            killer:call("CLIENT", "KILL", "ID", victim:call("CLIENT", "ID"))
            attempt("SET", "big", string.rep("x", 16 * 1024 * 1024))
            attempt("PING")
            print("still here")
            """, to: "hangup.lua", in: dir)
        let result = try scopelua(["run", "hangup.lua"], directory: dir)
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 3, "\(result.stdout)")
        guard lines.count == 3 else { return }
        let lost = "false\tredis: connection to \(server.url) lost during SET: "
        #expect(lines[0].hasPrefix(lost), "\(lines[0])")
        let reason = String(lines[0].dropFirst(lost.count))
        #expect(["Broken pipe", "Connection reset by peer", "Server closed the connection"].contains(reason), "\(reason)")
        #expect(lines[1] == "false\tredis: the connection to \(server.url) is closed after an earlier failure (lost during SET: \(reason)): open a new one")
        #expect(lines[2] == "still here")
    }

    // MARK: - URLs and logins

    @Test func urlsAreParsedAsRedisClientsWriteThem() {
        func parse(_ url: String) -> RedisEndpoint? {
            if case .success(let endpoint) = RedisEndpoint.parse(url) { return endpoint }
            return nil
        }
        let full = parse("redis://app:s%40cret@127.0.0.1:6390/2")
        #expect(full == RedisEndpoint(address: .tcp(host: "127.0.0.1", port: 6390), username: Array("app".utf8),
                                      password: Array("s@cret".utf8), db: 2))
        #expect(full?.label == "redis://app@127.0.0.1:6390/2")
        #expect(parse("redis://:pw@host")?.label == "redis://host:6379")
        #expect(parse("redis://:pw@host")?.password == Array("pw".utf8))
        #expect(parse("REDIS://h:1/0")?.label == "redis://h:1")
        #expect(parse("redis://[::1]:7000")?.address == .tcp(host: "::1", port: 7000))
        #expect(parse("redis://[::1]:7000")?.label == "redis://[::1]:7000")
        #expect(parse("redis://h/?db=4&password=p%26q&username=u")
                == RedisEndpoint(address: .tcp(host: "h", port: 6379), username: Array("u".utf8),
                                 password: Array("p&q".utf8), db: 4))
        let unix = parse("unix:///run/redis/redis.sock?db=3&password=pw")
        #expect(unix == RedisEndpoint(address: .unix(path: "/run/redis/redis.sock"), username: nil,
                                      password: Array("pw".utf8), db: 3))
        #expect(unix?.label == "unix:///run/redis/redis.sock?db=3")
        #expect(parse("unix://:pw@/tmp/r.sock")?.password == Array("pw".utf8))
        #expect(parse("unix://:pw@/tmp/r.sock")?.label == "unix:///tmp/r.sock")
        #expect(RedisEndpoint.masked("redis://u:pw@h/1?db=1&password=x") == "redis://u:***@h/1?db=1&password=***")
    }

    @Test func badURLsSayWhatIsWrongWithoutThePassword() {
        func error(_ url: String) -> String? {
            runLua("redis.connect('\(url)')").error?.message
        }
        let prefix = "test:1: redis: bad URL"
        #expect(error("localhost:6379") == "\(prefix) \"localhost:6379\": not a URL: use redis://host:port[/db] or unix:///path/to/redis.sock")
        #expect(error("http://h") == "\(prefix) \"http://h\": unknown scheme \"http\": use redis://host:port[/db] or unix:///path/to/redis.sock")
        #expect(error("rediss://h:6380") == "\(prefix) \"rediss://h:6380\": rediss:// (TLS) is not supported: the system's hiredis 0.14 has no TLS (use redis:// on a trusted network, or a unix socket)")
        #expect(error("redis://:secret@h:99999") == "\(prefix) \"redis://:***@h:99999\": bad port \"99999\" (a number from 1 to 65535)")
        #expect(error("redis://h:x") == "\(prefix) \"redis://h:x\": bad port \"x\" (a number from 1 to 65535)")
        #expect(error("redis://") == "\(prefix) \"redis://\": no host: write redis://host:port (e.g. redis://127.0.0.1:6379)")
        #expect(error("redis://h/x") == "\(prefix) \"redis://h/x\": bad database \"x\" in the path (a number, 0 or more)")
        #expect(error("redis://h/1?db=2") == "\(prefix) \"redis://h/1?db=2\": the database is given twice (in the path and as ?db=)")
        #expect(error("redis://h?foo=1") == "\(prefix) \"redis://h?foo=1\": unknown query parameter \"foo\" (known: db, password, username)")
        #expect(error("redis://h?password=secret&password=x") == "\(prefix) \"redis://h?password=***&password=***\": the password is given twice")
        #expect(error("redis://:%zz@h") == "\(prefix) \"redis://:***@h\": bad percent-escape in the password (a '%' must be followed by two hex digits)")
        #expect(error("redis://h#x") == "\(prefix) \"redis://h#x\": a Redis URL has no fragment (\"#...\"); percent-encode a '#' in a password as %23")
        #expect(error("unix://host/r.sock") == "\(prefix) \"unix://host/r.sock\": a unix socket URL names no host: write unix:///path/to/redis.sock (three slashes)")
        #expect(error("unix://") == "\(prefix) \"unix://\": no socket path: write unix:///path/to/redis.sock")
        let long = "/" + String(repeating: "d", count: 120)
        #expect(error("unix://\(long)") == "\(prefix) \"unix://\(long)\": the socket path is 121 bytes long; a unix socket's path has at most 107")
        #expect(error("redis://app@h") == "test:1: redis: a user name without a password for redis://app@h:6379: AUTH needs both")
    }

    /// user:password, the database and the client name, from the URL or the options (which
    /// win), over TCP and the unix socket; a wrong password fails the connect with Redis'
    /// message and never shows the password.
    @Test func loginsSelectTheUserTheDatabaseAndTheName() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        #expect(try server.cli("ACL", "SETUSER", "app", "on", ">s3cret", "~*", "+@all") == "OK")
        let tcp = server.url.replacingOccurrences(of: "redis://", with: "redis://app:s3cret@") + "/2"
        let run = runLua("""
            local function info(r)
              local s = r:call("CLIENT", "INFO")
              return s:match("name=(%S*)") .. " " .. s:match("db=(%d+)") .. " " .. s:match("user=(%S+)")
            end
            local a = redis.connect("\(tcp)", { name = "job" })
            local b = redis.connect("\(server.url)", { username = "app", password = "s3cret", db = 5 })
            local c = redis.connect("\(server.unixURL)?db=4")
            local d = redis.connect("\(server.unixURL)?password=s3cret&username=app", { db = 1 })
            a:call("SET", "where", "two")
            return info(a), a.label, info(b), b.label, info(c), c.label, info(d), d.label,
                   b:call("GET", "where"), (b:call("SELECT", 2)), b:call("GET", "where")
            """)
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        #expect(run.values == [
            .string("job 2 app"), .string("redis://app@127.0.0.1:\(server.port)/2"),
            .string(" 5 app"), .string("redis://app@127.0.0.1:\(server.port)/5"),
            .string(" 4 default"), .string("\(server.unixURL)?db=4"),
            .string(" 1 app"), .string("unix://app@\(server.socketPath)?db=1"),
            .nil, .string("OK"), .string("two"),
        ])
        let wrong = runLua("redis.connect('\(server.url.replacingOccurrences(of: "redis://", with: "redis://app:wrong@"))')")
        #expect(wrong.error?.message == "test:1: redis: cannot connect to redis://app@127.0.0.1:\(server.port): AUTH failed: WRONGPASS invalid username-password pair or user is disabled.")
        let noPassword = runLua("redis.connect('\(server.url)', { password = 'nope' })")
        #expect(noPassword.error?.message.hasPrefix("test:1: redis: cannot connect to \(server.url): AUTH failed: ERR AUTH <password> called without any password configured") == true)
        let badDB = runLua("redis.connect('\(server.url)/99')")
        #expect(badDB.error?.message == "test:1: redis: cannot connect to \(server.url)/99: SELECT failed: ERR DB index is out of range")
        #expect(try waitUntil { try server.clients().isEmpty })
    }

    // MARK: - The handle

    /// A connection is a resource of the scope that opened it: listed by
    /// `scope.current():resources()` (its label without the password), released when the
    /// scope ends (the server sees it go), unusable afterwards; one the collector reclaims
    /// is a leak, released and reported.
    @Test func aConnectionIsReleasedWithItsScope() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        #expect(try server.cli("ACL", "SETUSER", "app", "on", ">s3cret", "~*", "+@all") == "OK")
        let url = server.url.replacingOccurrences(of: "redis://", with: "redis://app:s3cret@")
        var sockets = -1
        let run = runLua("""
            watcher = redis.connect("\(server.url)")  -- a global: open until the runtime closes
            local function clients() return select(2, watcher:call("CLIENT", "LIST"):gsub("\\n", "")) end
            local function settle(n)  -- the server notices a closed socket on its own time
              local deadline = timer.now() + 20
              while clients() ~= n and timer.now() < deadline do timer.sleep(0.005) end
              return clients()
            end
            local kept, inside, listed
            scope(function()
              kept = redis.connect("\(url)")
              inside = clients()
              local d = scope.current():resources()[1]
              listed = d.kind .. " " .. d.label .. " " .. tostring(kept)
            end)
            local after = settle(1)
            local ok, err = pcall(function() return kept:call("PING") end)
            local closed = redis.connect("\(server.url)")
            local released = closed:close()
            local ok2, err2 = pcall(function() return closed:pipeline(function() end) end)
            redis.connect("\(server.url)")  -- dropped: a leak
            collectgarbage(); collectgarbage()
            local afterLeak = settle(1)
            return inside, listed, after, err, released, err2, afterLeak, kept.kind, kept.label
            """, beforeClose: { _ in sockets = openSockets(toPort: server.port) })
        #expect(run.error == nil, "\(run.error?.description ?? "")")
        let label = "redis://app@127.0.0.1:\(server.port)"
        #expect(run.values.count == 9)
        guard run.values.count == 9 else { return }
        #expect(run.values[0] == .integer(2))
        #expect(run.values[1] == .string("redis \(label) redis#2 \"\(label)\" (open, run/scope)"))
        #expect(run.values[2] == .integer(1))
        #expect(run.values[3] == .string("test:16: redis#2 \"\(label)\" used after release (released at the end of scope run/scope)"))
        #expect(run.values[4] == .boolean(true))
        #expect(run.values[5] == .string("test:19: redis#3 \"\(server.url)\" used after release (released at test:18)"))
        #expect(run.values[6] == .integer(1))
        #expect(run.values[7] == .string("redis"))
        #expect(run.values[8] == .string(label))
        #expect(run.diagnostics.contains { $0.hasPrefix("scopelua: leak: redis#4 \"\(server.url)\" acquired at test:20 was never released") },
                "\(run.diagnostics)")
        #expect(run.counts.acquired == run.counts.released)
        // Before the runtime closed, the watcher's socket was the only one left open; after, none.
        #expect(sockets == 1)
        #expect(openSockets(toPort: server.port) == 0)
        #expect(try waitUntil { try server.clients().isEmpty })
    }

    // MARK: - In a run

    /// The usual shape: a stage opens one connection in `open`, uses it per event (a
    /// pipeline of counters), and the stage scope releases it at the end; with
    /// `--workers 2` each worker has its own.
    @Test func aStageUsesAConnectionOpenedInOpen() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = temporaryDirectory()
        write("""
            stage "count" {
              open = function(ctx) ctx.state.r = redis.connect("\(server.url)", { name = "counter" }) end,
              process = function(ctx, e)
                local replies = ctx.state.r:pipeline(function(p)
                  p:call("HINCRBY", "kinds", e.kind, 1)
                  p:call("INCR", "total")
                end)
                e.total = replies[2]
                return e
              end,
            }
            pipeline "p" { "count" }
            """, to: "job.lua", in: dir)
        write(["a", "b", "a", "c", "a"].map { "{\"kind\":\"\($0)\"}\n" }.joined(), to: "in.jsonl", in: dir)
        let result = try scopelua(["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl"], directory: dir)
        #expect(result.status == 0, "\(result.stderr)")
        let totals = (read("\(dir)/out.jsonl") ?? "").split(separator: "\n").map { line in
            line.contains("\"total\":") ? String(line.split(separator: "\"total\":")[1].prefix { $0.isNumber }) : "?"
        }
        #expect(totals == ["1", "2", "3", "4", "5"])
        #expect(try server.cli("GET", "total") == "5")
        #expect(try server.cli("HGET", "kinds", "a") == "3")
        #expect(try server.cli("HLEN", "kinds") == "3")
        #expect(try server.clients().isEmpty)  // the process ended: nothing of it is connected
        // With workers, each runs `open` in its own state: a connection each.
        let parallel = try scopelua(["run", "job.lua", "--input", "in.jsonl", "--output", "out.jsonl", "--workers", "2"],
                                    directory: dir)
        #expect(parallel.status == 0, "\(parallel.stderr)")
        #expect(try server.cli("GET", "total") == "10")
        #expect(try server.cli("HGET", "kinds", "a") == "6")
        let parallelTotals = (read("\(dir)/out.jsonl") ?? "").split(separator: "\n").compactMap { line in
            line.split(separator: "\"total\":").last.flatMap { Int($0.prefix { $0.isNumber }) }
        }
        #expect(parallelTotals.sorted() == [6, 7, 8, 9, 10])
    }

    /// SIGTERM while a command blocks in the server: the graceful stop lets the command
    /// finish (a reply arriving during the grace is taken); once the stop is forced the
    /// wait ends at once with the stop error, and the process exits 143 without the last
    /// resort ("stuck outside Lua").
    @Test func aForcedStopEndsABlockedCommand() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = temporaryDirectory()
        write("""
            local r = redis.connect("\(server.url)", { name = "blocker" })
            r:call("BLPOP", "nothing", 0)
            """, to: "block.lua", in: dir)
        let child = try PipelineCommandTests.Child(["run", "block.lua", "--grace", "1"], directory: dir)
        #expect(waitUntil { ((try? server.clients()) ?? []).contains { $0.contains("name=blocker") && $0.contains("cmd=blpop") } })
        #expect(waitUntil { child.catches(SIGTERM) })
        kill(child.pid, SIGTERM)
        let (status, stderr) = child.finish()
        #expect(status == 143, "\(stderr)")
        #expect(stderr.contains("stopped by SIGTERM (forced)"), "\(stderr)")
        #expect(stderr.contains("in method 'call'"), "\(stderr)")
        #expect(stderr.contains("block.lua:2: in main chunk"), "\(stderr)")
        #expect(!stderr.contains("stuck outside Lua"), "\(stderr)")
        #expect(try waitUntil { try server.clients().isEmpty })
    }

    @Test func aGracefulStopLetsABlockedCommandFinish() throws {
        let server = try RedisServer.start()
        defer { server.stop() }
        let dir = temporaryDirectory()
        write("""
            local r = redis.connect("\(server.url)", { name = "waiter" })
            r:call("BLPOP", "queue", 0)
            """, to: "wait.lua", in: dir)
        let child = try PipelineCommandTests.Child(["run", "wait.lua", "--grace", "40"], directory: dir)
        #expect(waitUntil { ((try? server.clients()) ?? []).contains { $0.contains("name=waiter") && $0.contains("cmd=blpop") } })
        #expect(waitUntil { child.catches(SIGTERM) })
        kill(child.pid, SIGTERM)
        #expect(waitUntil { !child.hasPending(SIGTERM) })
        // Still waiting for its reply, which it takes: the list is empty afterwards.
        #expect(try server.cli("RPUSH", "queue", "job") == "1")
        let (status, stderr) = child.finish(timeout: 30)
        #expect(status == 143, "\(stderr)")
        #expect(stderr.contains("stopped by SIGTERM"), "\(stderr)")
        #expect(!stderr.contains("forced"), "\(stderr)")
        #expect(try server.cli("LLEN", "queue") == "0")
    }
}
