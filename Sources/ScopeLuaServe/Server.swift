import Dispatch
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ScopeLua
import ServiceLifecycle

/// The HTTP side of `scopelua serve` (docs/ARCHITECTURE.md, "Serving"): Hummingbird on
/// its own threads (NIO's), started and stopped with swift-service-lifecycle, in front of
/// the run, which stays on the thread that runs its Lua state. The only thing the two
/// share is the `IngestQueue` (and the read-only views `/metrics` and `/resources` read).
package final class Server: @unchecked Sendable {
    package struct Options: Sendable {
        package var host = "127.0.0.1"
        package var port = 8080
        /// The largest body `POST /events` takes (bytes); beyond it, 413.
        package var maxBody = 16 << 20
        /// Whether `POST /events` exists (`serve`), or only the views (`run --metrics-listen`).
        package var ingest = true
        package init() {}
    }

    package let options: Options
    package let queue: IngestQueue?
    private let group: ServiceGroup
    private let ended = DispatchSemaphore(value: 0)
    private let bound = DispatchSemaphore(value: 0)
    private let boundPort = Box<Int?>(nil)
    private let failure = Box<String?>(nil)

    /// A value set on one thread and read on another after a semaphore.
    final class Box<T>: @unchecked Sendable {
        var value: T
        init(_ value: T) { self.value = value }
    }

    /// `board`: the run's (`RunBoard`); with it, `GET /metrics` and `GET /resources`.
    package init(options: Options, queue: IngestQueue?, board: RunBoard? = nil) {
        self.options = options
        self.queue = queue
        var logger = Logger(label: "scopelua.serve")
        logger.logLevel = .error  // stderr is the run's: its own lines only
        let router = Router()
        let maxBody = options.maxBody
        if let queue, options.ingest {
            router.post("events") { request, _ -> Response in
                var request = request
                let body: ByteBuffer
                do {
                    body = try await request.collectBody(upTo: maxBody)
                } catch is NIOTooManyBytesError {
                    return Self.json(.contentTooLarge, "{\"error\":\"the body is over --max-body (\(maxBody) bytes)\"}")
                }
                return await Self.ingest(Array(buffer: body), into: queue)
            }
        }
        router.get("healthz") { _, _ -> Response in
            Self.text(.ok, "ok\n")
        }
        router.get("readyz") { _, _ -> Response in
            guard let queue else { return Self.text(.ok, "ready\n") }
            return queue.isReady ? Self.text(.ok, "ready\n") : Self.text(.serviceUnavailable, "not ready: the stages are not open, or the server is stopping\n")
        }
        if let board {
            let exporter = MetricsExporter(board: board, queue: queue)
            router.get("metrics") { _, _ -> Response in
                var headers = HTTPFields()
                headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: exporter.render())))
            }
            router.get("resources") { _, _ -> Response in
                Self.json(.ok, ResourcesView.render(board.read()))
            }
        }
        let port = boundPort, bound = bound
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "scopelua"),
            onServerRunning: { channel in
                port.value = channel.localAddress?.port
                bound.signal()
            },
            logger: logger)
        group = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], cancellationSignals: [], logger: logger))
    }

    /// Makes the server's event loops the threads Swift concurrency runs tasks on, so a
    /// request's handler runs where its connection's I/O is: without it every request
    /// crossed from an event loop to the concurrency pool and back, two thread wake-ups
    /// each way on the path of every answer. Once per process, on the main thread, before
    /// any task starts. False when it could not (the pool stays as it is; all still works).
    @discardableResult
    package static func runTasksOnEventLoops() -> Bool {
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
    }

    /// Starts listening; returns the port (the one the system chose for port 0), or why
    /// it could not.
    package func start() -> Result<Int, ServerFailure> {
        let group = group, ended = ended, failure = failure, bound = bound
        Task.detached {
            do {
                try await group.run()
            } catch {
                failure.value = "\(error)"
            }
            bound.signal()  // a server that never started wakes the waiter too
            ended.signal()
        }
        bound.wait()
        if let port = boundPort.value { return .success(port) }
        return .failure(ServerFailure(message: failure.value ?? "the server did not start"))
    }

    /// Stops: no new connection, requests in progress finish (Hummingbird's graceful
    /// shutdown), then returns.
    package func stop() {
        let group = group
        Task.detached { await group.triggerGracefulShutdown() }
        ended.wait()
    }

    package struct ServerFailure: Error {
        package let message: String
    }

    // MARK: - POST /events

    static func ingest(_ body: [UInt8], into queue: IngestQueue) async -> Response {
        let events: IngestChunk
        switch EventBody.split(body) {
        case .success(let e): events = e
        case .failure(.empty): return json(.badRequest, "{\"error\":\"no events in the body: send JSON lines, a JSON array of objects or one object\"}")
        case .failure(.badArray(let why)): return json(.badRequest, "{\"error\":\(quoted("not a JSON array: \(why)"))}")
        }
        let result = await withCheckedContinuation { queue.offer(events, $0) }
        switch result.status {
        case .done:
            let rejected = result.rejected.map { "{\"line\":\($0.line),\"reason\":\(quoted($0.reason))}" }.joined(separator: ",")
            return json(.ok, "{\"accepted\":\(result.accepted),\"rejected\":[\(rejected)],\"dead_lettered\":\(result.deadLettered)}")
        case .refused(let why):
            var headers = HTTPFields()
            headers[.retryAfter] = "1"
            headers[.contentType] = "application/json"
            return Response(status: .serviceUnavailable, headers: headers, body: .init(byteBuffer: ByteBuffer(string: "{\"error\":\(quoted(why))}\n")))
        case .failed(let why):
            return json(.serviceUnavailable, "{\"error\":\(quoted("not done: \(why)"))}")
        }
    }

    static func json(_ status: HTTPResponse.Status, _ text: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text + "\n")))
    }

    static func text(_ status: HTTPResponse.Status, _ text: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    /// `text` as a JSON string.
    static func quoted(_ text: String) -> String {
        var out = "\""
        for u in text.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20:
                let hex = String(c.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        return out + "\""
    }
}
