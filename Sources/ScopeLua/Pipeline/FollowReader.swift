import CScopeLua

#if canImport(Glibc)
import Glibc
#endif

/// `--follow`: the input file is followed by its name as it grows, like `tail -F`
/// (ARCHITECTURE.md, "Following a file"). The line reader asks this when a read finds
/// the end of the file, and when it has no file yet; this decides what happened to the
/// path: nothing (wait and read again), truncation (read again from 0), rotation (the
/// path names another file: finish the old one, then read the new one from its start),
/// or a file that appeared. It says so on stderr through `note`.
final class FollowedFile {
    /// How often the file is looked at again while nothing new is there.
    static let interval: UInt64 = 100_000_000

    let path: String
    /// The run's output and dead-letter files: the followed path must never become one
    /// of them (the run would read what it writes).
    let sinks: [InputFile.Identity]
    private let note: (String) -> Void
    /// Whether "waiting for ... to appear" was said (once), and "moved away" (once per
    /// disappearance).
    private var waitingNoted = false
    private var goneNoted = false

    init(path: String, sinks: [InputFile.Identity], note: @escaping (String) -> Void) {
        self.path = path
        self.sinks = sinks
        self.note = note
    }

    /// A file opened at the path: its descriptor (the reader owns it) and identity.
    struct Opened {
        var fd: Int32
        var identity: InputFile.Identity
    }

    enum AtEnd {
        /// Nothing changed: wait, then read again.
        case unchanged
        /// The file is shorter than what was read: read it again from the start.
        case truncated
        /// The path names another file now: read the old one to its end, then this one.
        case replaced(Opened)
        case failed(String)
    }

    enum Appearance {
        case opened(Opened)
        case missing
        case failed(String)
    }

    /// The reader found the end of the file open on `fd` (`identity`) after `offset`
    /// bytes.
    func atEnd(fd: Int32, identity: InputFile.Identity?, offset: Int64) -> AtEnd {
        var st = stat()
        if fstat(fd, &st) == 0, Int64(st.st_size) < offset {
            note("scopelua: input \(path) was truncated (to \(st.st_size) bytes, \(offset) had been read): reading it again from the start")
            return .truncated
        }
        guard stat(path, &st) == 0 else {
            // Moved away or deleted, and nothing at the path yet: what is still written
            // to the open file is read, until a new file appears.
            if !goneNoted {
                goneNoted = true
                note("scopelua: input \(path) was moved away or deleted: reading the file still open, and waiting for a new \(path)")
            }
            return .unchanged
        }
        let now = InputFile.Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        guard now != identity else {
            goneNoted = false
            return .unchanged
        }
        switch open() {
        case .opened(let opened):
            goneNoted = false
            note("scopelua: input \(path) was replaced by a new file (rotated): reading the old one to its end, then the new one from its start")
            return .replaced(opened)
        case .missing:
            return .unchanged  // gone again between the look and the open
        case .failed(let message):
            return .failed(message)
        }
    }

    /// The reader has no file yet (the path did not exist when the run started).
    func appear() -> Appearance {
        let result = open()
        switch result {
        case .missing:
            if !waitingNoted {
                waitingNoted = true
                note("scopelua: waiting for input \(path) to appear")
            }
        case .opened:
            if waitingNoted { note("scopelua: input \(path) appeared: reading it") }
        case .failed:
            break
        }
        return result
    }

    /// Opens the path without blocking (a FIFO put at the path must not hang the run),
    /// checks that it is a regular file and none of the run's sinks.
    private func open() -> Appearance {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { return .missing }
            return .failed("cannot open input \(path): \(String(cString: strerror(code)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let code = errno
            Glibc.close(fd)
            return .failed("cannot open input \(path): \(String(cString: strerror(code)))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            Glibc.close(fd)
            return .failed("input \(path) is no longer a regular file: --follow follows a regular file")
        }
        let identity = InputFile.Identity(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        if sinks.contains(identity) {
            Glibc.close(fd)
            return .failed("input \(path) is now the run's output or dead-letter file: the run would read what it writes")
        }
        return .opened(Opened(fd: fd, identity: identity))
    }

    /// What `--follow FILE` opens before the run: the descriptor, or -1 when the file
    /// does not exist yet (the run waits for it). Anything but a regular file (a FIFO, a
    /// directory, a device) is refused, as is a file that cannot be read.
    static func openBeforeRun(_ path: String) -> Result<Int32, InputFile.Problem> {
        var st = stat()
        if stat(path, &st) != 0 {
            let code = errno
            return code == ENOENT ? .success(-1) : .failure(InputFile.Problem(code))
        }
        if st.st_mode & S_IFMT == S_IFDIR { return .failure(InputFile.Problem(EISDIR)) }
        guard st.st_mode & S_IFMT == S_IFREG else {
            return .failure(InputFile.Problem(ENOTSUP, detail: "not a regular file (--follow follows a regular file by its name; a pipe or a FIFO streams without it)"))
        }
        return InputFile.open(path)
    }
}

extension LineReader {
    /// A reader that follows `path` (see `FollowedFile`), starting with `fd` already open
    /// on it (a copy is taken: the caller still closes its own), or -1 when the file
    /// does not exist yet. `note` says on stderr what happened to the file.
    convenience init(following path: String, fd: Int32, sinks: [InputFile.Identity],
                     note: @escaping (String) -> Void) {
        let own = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1
        self.init(fd: own, owned: true)
        follow = FollowedFile(path: path, sinks: sinks, note: note)
    }
}
