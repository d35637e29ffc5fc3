/// Where a Redis connection goes and how it logs in, from a URL as Redis' own clients
/// write them (redis-py's `from_url`, `redis-cli -u`):
///
///     redis://[[username]:password@]host[:port][/db][?db=N&password=P&username=U]
///     unix://[[username]:password@]/path/to/redis.sock[?db=N&password=P&username=U]
///
/// The port defaults to 6379 and the database to 0. User names, passwords, socket paths
/// and query values may be percent-encoded (`%40` for `@`). A value given twice (the
/// database in the path and in the query, a password in both places) is an error, not a
/// silent choice. `rediss://` (TLS) is refused: hiredis 0.14 has no TLS.
package struct RedisEndpoint: Equatable {
    package enum Address: Equatable {
        case tcp(host: String, port: Int32)
        case unix(path: String)
    }

    package var address: Address
    var username: [UInt8]?
    var password: [UInt8]?
    package var db: Int64?

    /// The URL as messages and `h.label` show it: normalized, and never with the
    /// password (`redis://app@127.0.0.1:6379/2`, `unix:///run/redis.sock?db=2`).
    package var label: String {
        let user = username.map { percentEncoded($0) + "@" } ?? ""
        let db = self.db ?? 0
        switch address {
        case .tcp(let host, let port):
            let shown = host.contains(":") ? "[\(host)]" : host
            return "redis://\(user)\(shown):\(port)" + (db != 0 ? "/\(db)" : "")
        case .unix(let path):
            return "unix://\(user)\(percentEncoded(Array(path.utf8)))" + (db != 0 ? "?db=\(db)" : "")
        }
    }

    static let defaultPort: Int32 = 6379
    /// `sun_path` holds 108 bytes with the terminating zero; hiredis would cut a longer
    /// path silently and connect elsewhere.
    static let maxSocketPath = 107

    /// Parses `text`; the error says what is wrong in a user's words (the caller adds the
    /// URL, masked).
    package static func parse(_ text: String) -> Result<RedisEndpoint, URLError> {
        do {
            return .success(try parseOrThrow(Array(text.utf8)))
        } catch {
            return .failure(error)
        }
    }

    package struct URLError: Error, Equatable {
        package var reason: String
        init(_ reason: String) { self.reason = reason }
    }

    private static func parseOrThrow(_ url: [UInt8]) throws(URLError) -> RedisEndpoint {
        guard let sep = find(url, Array("://".utf8)) else {
            throw URLError("not a URL: use redis://host:port[/db] or unix:///path/to/redis.sock")
        }
        let scheme = String(decoding: url[..<sep], as: UTF8.self).lowercased()
        var rest = Array(url[(sep + 3)...])
        if rest.contains(UInt8(ascii: "#")) {
            throw URLError("a Redis URL has no fragment (\"#...\"); percent-encode a '#' in a password as %23")
        }
        // The query first: a password in it may hold '/' or '@'.
        var query: [UInt8]?
        if let q = rest.firstIndex(of: UInt8(ascii: "?")) {
            query = Array(rest[(q + 1)...])
            rest = Array(rest[..<q])
        }
        let slash = rest.firstIndex(of: UInt8(ascii: "/")) ?? rest.count
        var authority = Array(rest[..<slash])
        let path = Array(rest[slash...])
        var endpoint = RedisEndpoint(address: .unix(path: ""), username: nil, password: nil, db: nil)
        // Userinfo: everything up to the last '@' of the authority (a password may hold '@'
        // only percent-encoded, but be lenient as redis-py is).
        if let at = authority.lastIndex(of: UInt8(ascii: "@")) {
            let userinfo = Array(authority[..<at])
            authority = Array(authority[(at + 1)...])
            if let colon = userinfo.firstIndex(of: UInt8(ascii: ":")) {
                endpoint.username = try nonEmpty(decode(Array(userinfo[..<colon]), what: "user name"))
                endpoint.password = try nonEmpty(decode(Array(userinfo[(colon + 1)...]), what: "password"))
            } else {
                endpoint.username = try nonEmpty(decode(userinfo, what: "user name"))
            }
        }
        switch scheme {
        case "redis":
            endpoint.address = try tcpAddress(authority)
            if path.count > 1 {
                endpoint.db = try database(Array(path[1...]), where: "path")
            }
        case "unix":
            guard authority.isEmpty else {
                throw URLError("a unix socket URL names no host: write unix:///path/to/redis.sock (three slashes)")
            }
            let decoded = try decode(path, what: "socket path")
            guard decoded.count > 1 else { throw URLError("no socket path: write unix:///path/to/redis.sock") }
            guard !decoded.contains(0) else { throw URLError("the socket path contains a zero byte") }
            guard decoded.count <= maxSocketPath else {
                throw URLError("the socket path is \(decoded.count) bytes long; a unix socket's path has at most \(maxSocketPath)")
            }
            endpoint.address = .unix(path: String(decoding: decoded, as: UTF8.self))
        case "rediss":
            throw URLError("rediss:// (TLS) is not supported: the system's hiredis 0.14 has no TLS (use redis:// on a trusted network, or a unix socket)")
        default:
            throw URLError("unknown scheme \"\(scheme)\": use redis://host:port[/db] or unix:///path/to/redis.sock")
        }
        if let query { try applyQuery(query, to: &endpoint) }
        return endpoint
    }

    /// `host[:port]`, `[v6]:port`.
    private static func tcpAddress(_ authority: [UInt8]) throws(URLError) -> Address {
        var host: [UInt8]
        var port: [UInt8]?
        if authority.first == UInt8(ascii: "[") {
            guard let close = authority.firstIndex(of: UInt8(ascii: "]")) else {
                throw URLError("an IPv6 address in brackets lacks its ']'")
            }
            host = Array(authority[1..<close])
            let after = Array(authority[(close + 1)...])
            if !after.isEmpty {
                guard after.first == UInt8(ascii: ":") else { throw URLError("unexpected text after the IPv6 address") }
                port = Array(after.dropFirst())
            }
        } else if let colon = authority.lastIndex(of: UInt8(ascii: ":")) {
            host = Array(authority[..<colon])
            port = Array(authority[(colon + 1)...])
        } else {
            host = authority
        }
        host = try decode(host, what: "host")
        guard !host.isEmpty else { throw URLError("no host: write redis://host:port (e.g. redis://127.0.0.1:6379)") }
        guard !host.contains(0) else { throw URLError("the host contains a zero byte") }
        var number = defaultPort
        if let port {
            let text = String(decoding: port, as: UTF8.self)
            guard !port.isEmpty, port.count <= 5, port.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  let value = Int32(text), value >= 1, value <= 65535 else {
                throw URLError("bad port \"\(text)\" (a number from 1 to 65535)")
            }
            number = value
        }
        return .tcp(host: String(decoding: host, as: UTF8.self), port: number)
    }

    /// A database number: decimal digits, 0 to 2147483647 (Redis' SELECT takes an int).
    static func database(_ raw: [UInt8], where place: String) throws(URLError) -> Int64 {
        let text = String(decoding: raw, as: UTF8.self)
        guard !raw.isEmpty, raw.count <= 10, raw.allSatisfy({ $0 >= 48 && $0 <= 57 }),
              let value = Int64(text), value <= Int64(Int32.max) else {
            throw URLError("bad database \"\(text)\" in the \(place) (a number, 0 or more)")
        }
        return value
    }

    /// `db=N&password=P&username=U`; each at most once, and not also given elsewhere.
    private static func applyQuery(_ query: [UInt8], to endpoint: inout RedisEndpoint) throws(URLError) {
        for pair in query.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let eq = pair.firstIndex(of: UInt8(ascii: "=")) ?? pair.endIndex
            let key = String(decoding: pair[pair.startIndex..<eq], as: UTF8.self)
            let rawValue = eq < pair.endIndex ? Array(pair[(eq + 1)...]) : []
            switch key {
            case "db":
                guard endpoint.db == nil else { throw URLError("the database is given twice (in the path and as ?db=)") }
                endpoint.db = try database(try decode(rawValue, what: "db"), where: "query")
            case "password":
                guard endpoint.password == nil else { throw URLError("the password is given twice") }
                endpoint.password = try nonEmpty(decode(rawValue, what: "password"))
            case "username":
                guard endpoint.username == nil else { throw URLError("the user name is given twice") }
                endpoint.username = try nonEmpty(decode(rawValue, what: "user name"))
            default:
                throw URLError("unknown query parameter \"\(key)\" (known: db, password, username)")
            }
        }
    }

    private static func nonEmpty(_ bytes: [UInt8]) -> [UInt8]? { bytes.isEmpty ? nil : bytes }

    /// Percent-decoding; a '%' not followed by two hex digits is an error.
    package static func decode(_ raw: [UInt8], what: String) throws(URLError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(raw.count)
        var i = 0
        while i < raw.count {
            if raw[i] == UInt8(ascii: "%") {
                guard i + 2 < raw.count, let hi = hex(raw[i + 1]), let lo = hex(raw[i + 2]) else {
                    throw URLError("bad percent-escape in the \(what) (a '%' must be followed by two hex digits)")
                }
                out.append(hi << 4 | lo)
                i += 3
            } else {
                out.append(raw[i])
                i += 1
            }
        }
        return out
    }

    private static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 65...70: return c - 55
        case 97...102: return c - 87
        default: return nil
        }
    }

    private static func find(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i..<(i + needle.count)].elementsEqual(needle) {
            return i
        }
        return nil
    }

    /// `url` for an error message: a password in it (userinfo or query) replaced by `***`.
    package static func masked(_ url: String) -> String {
        var bytes = Array(url.utf8)
        let star = Array("***".utf8)
        // The query's password=...
        if let q = bytes.firstIndex(of: UInt8(ascii: "?")) {
            var out = Array(bytes[...q])
            let pairs = bytes[(q + 1)...].split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: false)
            for (n, pair) in pairs.enumerated() {
                if n > 0 { out.append(UInt8(ascii: "&")) }
                if pair.starts(with: Array("password=".utf8)) {
                    out += Array("password=".utf8) + star
                } else {
                    out += pair
                }
            }
            bytes = out
        }
        // userinfo's password: between the first ':' after "://" and the last '@' of the
        // authority.
        if let sep = find(bytes, Array("://".utf8)) {
            let start = sep + 3
            let end = bytes[start...].firstIndex(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") }) ?? bytes.count
            if let at = bytes[start..<end].lastIndex(of: UInt8(ascii: "@")),
               let colon = bytes[start..<at].firstIndex(of: UInt8(ascii: ":")), colon + 1 < at {
                bytes.replaceSubrange((colon + 1)..<at, with: star)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Bytes as a URL shows them: unreserved characters and '/' as they are, the rest
/// percent-encoded (a label stays one readable line whatever a user name holds).
private func percentEncoded(_ bytes: [UInt8]) -> String {
    var out = ""
    for b in bytes {
        switch b {
        case 48...57, 65...90, 97...122, UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
             UInt8(ascii: "~"), UInt8(ascii: "/"):
            out.unicodeScalars.append(Unicode.Scalar(b))
        default:
            let digits = Array("0123456789ABCDEF".utf8)
            out += "%"
            out.unicodeScalars.append(Unicode.Scalar(digits[Int(b >> 4)]))
            out.unicodeScalars.append(Unicode.Scalar(digits[Int(b & 15)]))
        }
    }
    return out
}
