import CScopeLua
import CSQLite

#if canImport(Glibc)
import Glibc
#endif

/// How often a run's barrier runs (`--checkpoint-every`): every so many events read,
/// every so many seconds, or whichever comes first (docs/ARCHITECTURE.md, "Barriers and
/// checkpoints").
public struct CheckpointInterval: Sendable, Equatable, CustomStringConvertible {
    public var events: Int?
    public var seconds: Double?

    /// 10 000 events or 5 seconds, whichever comes first: at about 100 000 events/s a
    /// barrier every tenth of a second would cost a few fsyncs each time; a slow or idle
    /// input still commits every few seconds.
    public static let standard = CheckpointInterval(events: 10_000, seconds: 5)
    public static let maxEvents = 1_000_000_000
    public static let secondsRange: ClosedRange<Double> = 0.001...86_400
    /// What `--checkpoint-every` accepts, for messages.
    public static let forms = "a number of events (5000), of seconds (2s, 500ms) or both, whichever comes first (5000,2s); events from 1 to \(maxEvents), seconds from 0.001 to 86400"

    public init(events: Int?, seconds: Double?) {
        self.events = events
        self.seconds = seconds
    }

    /// `5000`, `2s`, `1.5s`, `500ms`, `5000,2s`: nil for anything else (a usage error
    /// naming `forms`). Never traps: the numbers are checked against their ranges.
    public static func parse(_ text: String) -> CheckpointInterval? {
        var result = CheckpointInterval(events: nil, seconds: nil)
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count) else { return nil }
        for part in parts {
            // "5000, 2s": spaces around an item are allowed.
            let item = String(part.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
            if let n = Int(item) {
                guard result.events == nil, (1...maxEvents).contains(n) else { return nil }
                result.events = n
                continue
            }
            var number = Substring(item)
            var scale = 1.0
            if number.hasSuffix("ms") {
                number = number.dropLast(2)
                scale = 0.001
            } else if number.hasSuffix("s") {
                number = number.dropLast()
            } else {
                return nil
            }
            // Digits and one dot only: Double() would also take "nan", "inf", "0x1p3".
            guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
                  number.filter({ $0 == "." }).count <= 1, let value = Double(number) else { return nil }
            let seconds = value * scale
            guard result.seconds == nil, secondsRange.contains(seconds) else { return nil }
            result.seconds = seconds
        }
        return result
    }

    public var description: String {
        var parts: [String] = []
        if let events { parts.append("\(events) events") }
        if let seconds { parts.append(seconds < 1 ? "\(Int((seconds * 1000).rounded()))ms" : "\(seconds)s") }
        return parts.joined(separator: " or ")
    }
}

/// What a checkpoint holds: where the input was read to, how long the output and the
/// dead-letter file were, and the run's counts, all committed in one transaction.
struct CheckpointRecord {
    var pipeline: String
    /// The input as named on the command line, and what it was.
    var input: String
    var identity: SourceIdentity
    var position: SourcePosition
    /// The output and dead-letter file as named (`-` stdout, `none`), and their committed
    /// `checkpointState` (nil: cannot be taken back).
    var output: String
    var outputLength: Int64?
    var deadLetter: String?
    var deadLetterLength: Int64?
    /// The report's counts (see `PipelineRun.checkpointCounters`).
    var counters: [(String, Int)]
    /// Barriers committed so far, this one included.
    var barriers: Int
}

/// The checkpoint file (`--checkpoint state.db`): a SQLite database this run holds
/// alone, on the SQLite C API as Resources/SQLite.swift uses it.
final class CheckpointStore {
    let path: String
    private var db: OpaquePointer?
    /// A descriptor of the database file holding an exclusive flock: a second run with
    /// the same checkpoint is refused (fcntl locks, which SQLite uses, are separate).
    private var lockFD: Int32 = -1
    private var upsert: OpaquePointer?
    private var counter: OpaquePointer?

    /// 'SLCK': marks a database as a scopelua checkpoint.
    static let applicationID: Int32 = 0x534C_434B

    private init(path: String) {
        self.path = path
    }

    deinit { close() }

    /// Opens (or creates) the checkpoint at `path`; `reset` forgets what it held. The
    /// failure says why, naming the file.
    static func open(_ path: String, reset: Bool) -> Result<CheckpointStore, CheckpointProblem> {
        let store = CheckpointStore(path: path)
        if let problem = store.setUp(reset: reset) {
            store.close()
            return .failure(CheckpointProblem(message: "checkpoint \(path): \(problem)"))
        }
        return .success(store)
    }

    private func setUp(reset: Bool) -> String? {
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil)
        db = handle
        guard rc == SQLITE_OK, let db = handle else {
            return handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
        }
        lockFD = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard lockFD >= 0 else { return String(cString: strerror(errno)) }
        if flock(lockFD, LOCK_EX | LOCK_NB) != 0 {
            return errno == EWOULDBLOCK ? "in use by another run" : String(cString: strerror(errno))
        }
        sqlite3_busy_timeout(db, 5000)
        guard let id = integer("PRAGMA application_id") else { return "not a scopelua checkpoint (\(message))" }
        if id != Self.applicationID {
            guard let tables = integer("SELECT count(*) FROM sqlite_master") else { return message }
            guard tables == 0 else { return "not a scopelua checkpoint (a database with other tables): give another file" }
            if let problem = execute("""
                PRAGMA journal_mode=WAL;
                PRAGMA application_id=\(Self.applicationID);
                CREATE TABLE checkpoint(
                  id INTEGER PRIMARY KEY CHECK (id = 1),
                  pipeline TEXT NOT NULL,
                  input TEXT NOT NULL, input_device INTEGER NOT NULL, input_inode INTEGER NOT NULL,
                  input_size INTEGER NOT NULL, input_hashed_bytes INTEGER NOT NULL, input_hash INTEGER NOT NULL,
                  input_offset INTEGER NOT NULL, input_line INTEGER NOT NULL,
                  output TEXT NOT NULL, output_length INTEGER,
                  dead_letter TEXT, dead_letter_length INTEGER,
                  barriers INTEGER NOT NULL, committed_at REAL NOT NULL);
                CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
                """) { return problem }
        }
        // Each commit is on disk when COMMIT returns (the WAL is synced), after the
        // output it describes (see PipelineRun.barrier).
        if let problem = execute("PRAGMA synchronous=NORMAL") { return problem }
        if reset, let problem = execute("BEGIN IMMEDIATE; DELETE FROM checkpoint; DELETE FROM counters; COMMIT") {
            return problem
        }
        upsert = prepare("""
            INSERT OR REPLACE INTO checkpoint VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
            """)
        counter = prepare("INSERT INTO counters(name, value) VALUES (?1, ?2)")
        guard upsert != nil, counter != nil else { return message }
        return nil
    }

    /// SQLite's message for the last failure.
    private var message: String {
        db.map { String(cString: sqlite3_errmsg($0)) } ?? "not open"
    }

    private func execute(_ sql: String) -> String? {
        guard let db else { return "not open" }
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &err)
        guard rc != SQLITE_OK else { return nil }
        defer { sqlite3_free(err) }
        return err.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
    }

    private func prepare(_ sql: String) -> OpaquePointer? {
        var stmt: OpaquePointer?
        guard let db, sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK else { return nil }
        return stmt
    }

    /// The first column of the first row of `sql`, as an integer (nil on failure).
    private func integer(_ sql: String) -> Int64? {
        guard let stmt = prepare(sql) else { return nil }
        defer { sqlite3_finalize(stmt) }
        guard sqlite3_step(stmt) == SQLITE_ROW else { return nil }
        return sqlite3_column_int64(stmt, 0)
    }

    /// The committed checkpoint, nil when there is none yet, or why it cannot be read.
    func load() -> Result<CheckpointRecord?, CheckpointProblem> {
        func fail(_ what: String) -> Result<CheckpointRecord?, CheckpointProblem> {
            .failure(CheckpointProblem(message: "checkpoint \(path): \(what)"))
        }
        guard let stmt = prepare("""
            SELECT pipeline, input, input_device, input_inode, input_size, input_hashed_bytes, input_hash,
                   input_offset, input_line, output, output_length, dead_letter, dead_letter_length, barriers
            FROM checkpoint WHERE id = 1
            """) else { return fail(message) }
        defer { sqlite3_finalize(stmt) }
        switch sqlite3_step(stmt) {
        case SQLITE_DONE: return .success(nil)
        case SQLITE_ROW: break
        default: return fail(message)
        }
        func text(_ i: Int32) -> String? {
            sqlite3_column_text(stmt, i).map { String(cString: $0) }
        }
        func int(_ i: Int32) -> Int64 { sqlite3_column_int64(stmt, i) }
        func optionalInt(_ i: Int32) -> Int64? { sqlite3_column_type(stmt, i) == SQLITE_NULL ? nil : int(i) }
        // Values read back are checked before anything uses them (a count, an offset):
        // a damaged file is an error, never a trap.
        let hashed = int(5), offset = int(7), line = int(8), barriers = int(13)
        guard let pipeline = text(0), let input = text(1), let output = text(9),
              (0...Int64(SourceIdentity.hashLimit)).contains(hashed), offset >= 0, line >= 0, barriers >= 0,
              line <= Int64(Int.max), barriers <= Int64(Int.max),
              (optionalInt(10) ?? 0) >= 0, (optionalInt(12) ?? 0) >= 0 else {
            return fail("the committed record is damaged: remove the file or give --checkpoint-reset")
        }
        var record = CheckpointRecord(
            pipeline: pipeline, input: input,
            identity: SourceIdentity(device: UInt64(bitPattern: int(2)), inode: UInt64(bitPattern: int(3)), size: int(4),
                                     hashedBytes: Int(hashed), hash: UInt64(bitPattern: int(6))),
            position: SourcePosition(offset: offset, line: Int(line)),
            output: output, outputLength: optionalInt(10), deadLetter: text(11), deadLetterLength: optionalInt(12),
            counters: [], barriers: Int(barriers))
        guard let rows = prepare("SELECT name, value FROM counters ORDER BY name") else { return fail(message) }
        defer { sqlite3_finalize(rows) }
        while sqlite3_step(rows) == SQLITE_ROW {
            let value = sqlite3_column_int64(rows, 1)
            guard let name = sqlite3_column_text(rows, 0).map({ String(cString: $0) }), value >= 0, value <= Int64(Int.max) else {
                return fail("the committed counts are damaged: remove the file or give --checkpoint-reset")
            }
            record.counters.append((name, Int(value)))
        }
        return .success(record)
    }

    /// Commits `record` in one transaction (synced to disk when it returns). Nil, or
    /// SQLite's reason (the transaction is rolled back: the previous checkpoint stands).
    func commit(_ record: CheckpointRecord) -> String? {
        guard let upsert, let counter else { return "not open" }
        if let problem = execute("BEGIN IMMEDIATE") { return problem }
        func bind(_ stmt: OpaquePointer, _ i: Int32, _ value: Int64?) {
            if let value { sqlite3_bind_int64(stmt, i, value) } else { sqlite3_bind_null(stmt, i) }
        }
        func bind(_ stmt: OpaquePointer, _ i: Int32, _ value: String?) {
            if let value { sqlite3_bind_text(stmt, i, value, -1, scopelua_sqlite_transient()) } else { sqlite3_bind_null(stmt, i) }
        }
        func step(_ stmt: OpaquePointer) -> Bool {
            defer {
                sqlite3_reset(stmt)
                sqlite3_clear_bindings(stmt)
            }
            return sqlite3_step(stmt) == SQLITE_DONE
        }
        var failure: String?
        bind(upsert, 1, record.pipeline)
        bind(upsert, 2, record.input)
        bind(upsert, 3, Int64(bitPattern: record.identity.device))
        bind(upsert, 4, Int64(bitPattern: record.identity.inode))
        bind(upsert, 5, record.identity.size)
        bind(upsert, 6, Int64(record.identity.hashedBytes))
        bind(upsert, 7, Int64(bitPattern: record.identity.hash))
        bind(upsert, 8, record.position.offset)
        bind(upsert, 9, Int64(record.position.line))
        bind(upsert, 10, record.output)
        bind(upsert, 11, record.outputLength)
        bind(upsert, 12, record.deadLetter)
        bind(upsert, 13, record.deadLetterLength)
        bind(upsert, 14, Int64(record.barriers))
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        sqlite3_bind_double(upsert, 15, Double(now.tv_sec) + Double(now.tv_nsec) / 1e9)
        if !step(upsert) {
            failure = message
        } else if let problem = execute("DELETE FROM counters") {
            failure = problem
        } else {
            for (name, value) in record.counters {
                bind(counter, 1, name)
                bind(counter, 2, Int64(value))
                if !step(counter) {
                    failure = message
                    break
                }
            }
        }
        if failure == nil, let problem = execute("COMMIT") { failure = problem }
        if let failure {
            _ = execute("ROLLBACK")
            return failure
        }
        return nil
    }

    func close() {
        sqlite3_finalize(upsert)
        sqlite3_finalize(counter)
        upsert = nil
        counter = nil
        if let db { sqlite3_close_v2(db) }
        db = nil
        if lockFD >= 0 { Glibc.close(lockFD) }
        lockFD = -1
    }
}

/// Why a checkpoint cannot be used: the run is refused (exit 2), nothing truncated.
struct CheckpointProblem: Error {
    let message: String
}
