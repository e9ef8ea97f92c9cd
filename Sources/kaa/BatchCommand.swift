import ArgumentParser
import Foundation
import KaaCore
import KaaEngine
import KaaQuality
import KaaSnapshot

/// `kaa batch`: scores a file offline through a snapshot's pipeline and model — the same
/// ``Scorer`` the node serves with.
struct BatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "batch",
        abstract: "Score a JSONL or CSV file through a snapshot's pipeline and model.",
        discussion: """
        Input JSONL: one object per line, input name -> that row's value (a number or string for \
        a scalar field, nested arrays for the dimensions after the batch). Input CSV: a header \
        row; columns named like the inputs feed them (extra columns are ignored), or, for a \
        model with a single 2-D input, every column in order. Output: JSONL, one object per \
        input row, output name -> value, in input order.

        Streams in constant memory: chunks of --batch-size rows are scored on --threads \
        threads, at most two chunks per thread in flight, and written in order. A progress \
        bar goes to stderr when it is a terminal; a summary line ends the run. A bad row stops \
        the run with its line number and field (exit 1), or with --skip-bad is reported on \
        stderr and left out.
        """)

    @Argument(help: "The snapshot archive (.kaa).") var snapshot: String
    @Option(help: "The rows to score: a .jsonl or .csv file, or - for stdin.") var input: String
    @Option(help: "Where to write the scored rows (JSONL), or - for stdout.") var output: String
    @Option(help: "jsonl or csv (default: from the input's extension).") var format: String?
    @Option(help: "Rows scored per call.") var batchSize = 1024
    @Option(help: "Scoring threads (default: one per core).") var threads: Int?
    @Flag(help: "Report bad rows on stderr and go on without them.") var skipBad = false
    @Option(help: "A trusted public key file (repeatable); then a valid signature by one of them is required.")
    var trust: [String] = []

    func validate() throws {
        if batchSize < 1 || batchSize > 1 << 20 { throw ValidationError("--batch-size must be between 1 and 1048576") }
        if let threads, threads < 1 || threads > 256 { throw ValidationError("--threads must be between 1 and 256") }
        if let format, BatchFormat(rawValue: format) == nil { throw ValidationError("--format must be jsonl or csv") }
        if format == nil, input == "-" { throw ValidationError("reading stdin needs --format jsonl or --format csv") }
        if format == nil, BatchFormat.guess(input) == nil {
            throw ValidationError("cannot tell the format of `\(input)` from its extension; give --format jsonl or --format csv")
        }
    }

    func run() throws {
        let started = DispatchTime.now().uptimeNanoseconds
        let format = self.format.flatMap(BatchFormat.init(rawValue:)) ?? BatchFormat.guess(input)!
        let scorer: Scorer
        let id: String
        do {
            (scorer, id) = try Self.openSnapshot(snapshot, trust: trust)
        } catch let e as CommandFailure {
            throw fail(e.description)
        }
        let reader: RecordReader
        var decoder = RowDecoder(scorer: scorer, format: format)
        do {
            reader = try RecordReader(path: input, csv: format == .csv)
            if format == .csv {
                guard let header = try reader.header() else { throw CommandFailure("`\(input)` is empty; a CSV file starts with a header row") }
                try decoder.bind(header: header.fields, line: header.line)
            }
        } catch let e as CommandFailure {
            throw fail(e.description)
        } catch let e as RowError {
            throw fail(e.description)
        }
        let sink: OutputSink
        do { sink = try OutputSink(path: output) } catch let e as CommandFailure { throw fail(e.description) }

        let job = BatchJob(scorer: scorer, decoder: decoder, reader: reader, batchSize: batchSize,
                           threads: threads ?? ProcessInfo.processInfo.activeProcessorCount, skipBad: skipBad)
        let progress = BatchProgress(total: reader.size)
        let outcome = job.run(
            write: { bytes in try sink.write(bytes) },
            report: { rows in progress.update(rows: rows, bytes: job.bytesRead) },
            bad: { error in FileHandle.standardError.write(Data("skipped \(error)\n".utf8)) })
        progress.finish()
        switch outcome {
        case .failure(let message):
            sink.abandon()
            throw fail(message)
        case .success(let rows, let skipped):
            do { try sink.finish() } catch let e as CommandFailure { throw fail(e.description) }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            let rate = seconds > 0 ? Double(rows) / seconds : 0
            var line = "scored \(rows) rows with \(id) in \(String(format: "%.2f", seconds)) s (\(Int(rate.rounded())) rows/s)"
            if skipped > 0 { line += ", skipped \(skipped) bad rows" }
            line += " -> \(output == "-" ? "stdout" : output)\n"
            if output == "-" {
                FileHandle.standardError.write(Data(line.utf8))
            } else {
                FileHandle.standardOutput.write(Data(line.utf8))
            }
        }
    }

    func fail(_ message: String) -> ExitCode {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        return ExitCode.failure
    }

    /// Verifies the archive (digest, and signature with `trust`), loads its model and binds
    /// its pipeline.
    static func openSnapshot(_ path: String, trust: [String]) throws -> (Scorer, String) {
        do {
            var keys = Set<PublisherPublicKey>()
            for t in trust { keys.insert(try PublisherPublicKey(contentsOf: t)) }
            let (archive, files) = try SnapshotArchive.loadFiles(path: path, policy: .init(trustedKeys: keys))
            let m = archive.manifest
            let id = m.isDraft ? m.name : "\(m.name)@\(m.version)"
            guard let bytes = files[m.model] else { throw CommandFailure("\(id): the archive has no model file `\(m.model)`") }
            let model: Model
            do { model = try Model(onnx: Data(bytes)) } catch let e as EngineError {
                throw CommandFailure("\(id): cannot load the model: \(e.message)")
            }
            var pipeline: Pipeline?
            do {
                pipeline = try m.pipeline.map { try Pipeline(yaml: $0) }
                return (try Scorer(model: model, pipeline: pipeline), id)
            } catch let e as PipelineError {
                throw CommandFailure("\(id): the pipeline does not fit the model: \(e.message)")
            }
        } catch let e as SnapshotError {
            throw CommandFailure(e.message)
        }
    }
}

/// Where scored rows go: a temporary file renamed into place at the end (so a failed run
/// leaves no half output under the name), or stdout.
final class OutputSink {
    private let path: String
    private let temp: String?
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        if path == "-" {
            temp = nil
            fd = 1
            return
        }
        let t = path + ".partial"
        fd = open(t, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CommandFailure("cannot create `\(t)`: \(String(cString: strerror(errno)))") }
        temp = t
    }

    func write(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw CommandFailure("cannot write `\(temp ?? path)`: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    func finish() throws {
        guard let temp else { return }
        guard close(fd) == 0 else { throw CommandFailure("cannot write `\(temp)`: \(String(cString: strerror(errno)))") }
        guard rename(temp, path) == 0 else { throw CommandFailure("cannot rename `\(temp)` to `\(path)`: \(String(cString: strerror(errno)))") }
    }

    func abandon() {
        guard let temp else { return }
        close(fd)
        unlink(temp)
    }
}

/// A progress line on stderr when it is a terminal: rows, rows/s, and the share of the input
/// read when its size is known.
final class BatchProgress {
    private let enabled = isatty(STDERR_FILENO) != 0
    private let total: Int?
    private let started = DispatchTime.now().uptimeNanoseconds
    private var last: UInt64 = 0

    init(total: Int?) { self.total = total }

    func update(rows: Int, bytes: Int) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        guard now - last > 200_000_000 else { return }
        last = now
        let rate = Double(rows) / max(Double(now - started) / 1e9, 1e-3)
        var text = "\r\(rows) rows  \(Int(rate)) rows/s"
        if let total, total > 0 {
            let percent = min(100, bytes * 100 / total)
            let width = 30
            let filled = width * percent / 100
            text = "\r[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "] \(percent)%  \(rows) rows  \(Int(rate)) rows/s"
        }
        FileHandle.standardError.write(Data((text + "\u{1B}[K").utf8))
    }

    func finish() {
        guard enabled else { return }
        FileHandle.standardError.write(Data("\r\u{1B}[K".utf8))
    }
}

/// The streaming machinery: a reader thread cuts chunks, worker threads decode and score
/// them, and the caller's thread writes their results in input order. At most two chunks per
/// worker are in flight (read but not yet written), so memory stays bounded whatever the
/// input's size.
final class BatchJob: @unchecked Sendable {
    // SAFETY: every mutable property below is read and written only with `condition` locked;
    // `reader` is used only by the reader thread once `run` starts it.
    enum Outcome {
        case success(rows: Int, skipped: Int)
        case failure(String)
    }

    struct ChunkResult {
        var bytes: [UInt8] = []
        var rows = 0
        var bad: [RowError] = []
        var failure: String?
    }

    let scorer: Scorer
    let decoder: RowDecoder
    let reader: RecordReader
    let batchSize: Int
    let threads: Int
    let skipBad: Bool

    private let condition = NSCondition()
    private var work: [RecordChunk] = []
    private var results: [Int: ChunkResult] = [:]
    private var inFlight = 0
    private var chunksRead = 0
    private var readerDone = false
    private var readerFailure: String?
    private var stopped = false
    private var _bytesRead = 0

    init(scorer: Scorer, decoder: RowDecoder, reader: RecordReader, batchSize: Int, threads: Int, skipBad: Bool) {
        self.scorer = scorer
        self.decoder = decoder
        self.reader = reader
        self.batchSize = batchSize
        self.threads = threads
        self.skipBad = skipBad
    }

    var bytesRead: Int { condition.withLock { _bytesRead } }

    func run(write: ([UInt8]) throws -> Void, report: (Int) -> Void, bad: (RowError) -> Void) -> Outcome {
        let limit = threads * 2
        let readerThread = Thread { [self] in
            while true {
                let chunk: RecordChunk?
                do { chunk = try reader.next(max: batchSize) } catch {
                    condition.withLock { readerFailure = "\(error)"; readerDone = true; condition.broadcast() }
                    return
                }
                condition.lock()
                _bytesRead = reader.bytesRead
                guard let chunk else {
                    readerDone = true
                    condition.broadcast()
                    condition.unlock()
                    return
                }
                while inFlight >= limit && !stopped { condition.wait() }
                if stopped { condition.unlock(); return }
                work.append(chunk)
                inFlight += 1
                chunksRead += 1
                condition.broadcast()
                condition.unlock()
            }
        }
        readerThread.start()
        for _ in 0..<threads {
            Thread { [self] in
                while true {
                    condition.lock()
                    while work.isEmpty && !readerDone && !stopped { condition.wait() }
                    if stopped || work.isEmpty { condition.unlock(); return }
                    let chunk = work.removeFirst()
                    condition.unlock()
                    let result = score(chunk)
                    condition.withLock {
                        results[chunk.sequence] = result
                        condition.broadcast()
                    }
                }
            }.start()
        }

        var next = 0
        var rows = 0
        var skipped = 0
        while true {
            condition.lock()
            while results[next] == nil && readerFailure == nil && !(readerDone && next == chunksRead) { condition.wait() }
            if let failure = readerFailure, results[next] == nil {
                stopped = true
                condition.broadcast()
                condition.unlock()
                return .failure(failure)
            }
            guard let result = results.removeValue(forKey: next) else {
                condition.unlock()
                break // every chunk written
            }
            inFlight -= 1
            condition.broadcast()
            condition.unlock()
            if let failure = result.failure {
                stop()
                return .failure(failure)
            }
            for e in result.bad { bad(e) }
            skipped += result.bad.count
            do { try write(result.bytes) } catch {
                stop()
                return .failure("\(error)")
            }
            rows += result.rows
            next += 1
            report(rows)
        }
        return .success(rows: rows, skipped: skipped)
    }

    private func stop() {
        condition.withLock {
            stopped = true
            condition.broadcast()
        }
    }

    /// Decodes and scores one chunk. A row the pipeline refuses is named by its line; with
    /// `skipBad` it is left out and the rest scored again.
    func score(_ chunk: RecordChunk) -> ChunkResult {
        var result = ChunkResult()
        var skip = Set<Int>()
        while true {
            // `kept[i]` is the chunk's own index of the i-th record decoded this round.
            let kept = (0..<chunk.count).filter { !skip.contains($0) }
            let decoded: (inputs: [String: Tensor], records: [Int], bad: [(Int, RowError)])
            do {
                decoded = try decoder.decode(skip.isEmpty ? chunk : chunk.without(skip), skipBad: skipBad)
            } catch {
                result.failure = error.description
                return result
            }
            for (i, e) in decoded.bad {
                skip.insert(kept[i])
                result.bad.append(e)
            }
            do throws(PipelineError) {
                let outputs = try scorer.run(decoded.inputs)
                var w = JSONWriter(capacity: decoded.records.count * 160)
                RowEncoder.encode(outputs, order: scorer.outputs, rows: decoded.records.count, into: &w)
                result.bytes = w.bytes
                result.rows = decoded.records.count
                result.bad.sort { $0.line < $1.line }
                return result
            } catch {
                // Which row? The pipeline says, or scoring the rows one by one finds it.
                let found: (row: Int, error: PipelineError)?
                if let row = error.row { found = (row, error) } else { found = firstFailing(decoded.inputs, rows: decoded.records.count) }
                guard let found else {
                    let lines = decoded.records.map { chunk.lines[kept[$0]] }
                    result.failure = "lines \(lines.first ?? 0)-\(lines.last ?? 0): \(error.message)"
                    return result
                }
                let index = kept[decoded.records[found.row]]
                let e = RowError(line: chunk.lines[index], field: nil, message: Self.withoutRow(found.error))
                guard skipBad else {
                    result.failure = e.description
                    return result
                }
                result.bad.append(e)
                skip.insert(index)
            }
        }
    }

    /// The message of a pipeline error without its `row N` part (the line says it).
    static func withoutRow(_ e: PipelineError) -> String {
        PipelineError(e.code, e.reason, step: e.step, field: e.field).message
    }

    /// The first row that fails on its own, and its error, if any row does.
    func firstFailing(_ inputs: [String: Tensor], rows: Int) -> (row: Int, error: PipelineError)? {
        for r in 0..<rows {
            let one = inputs.mapValues { t -> Tensor in
                guard t.rank >= 1, t.shape[0] == rows else { return t }
                let per = t.count / max(rows, 1)
                var shape = t.shape
                shape[0] = 1
                return Tensor(shape: shape, storage: t.storage.slice(r * per..<(r + 1) * per))
            }
            do throws(PipelineError) { _ = try scorer.run(one) } catch { return (r, error) }
        }
        return nil
    }
}

extension RecordChunk {
    /// The chunk without the records at `indices`.
    func without(_ indices: Set<Int>) -> RecordChunk {
        var out = RecordChunk(sequence: sequence, bytes: [], ends: [], lines: [])
        for i in 0..<count where !indices.contains(i) {
            out.bytes.append(contentsOf: record(i))
            out.ends.append(out.bytes.count)
            out.lines.append(lines[i])
        }
        return out
    }
}

extension Tensor.Storage {
    func slice(_ r: Range<Int>) -> Tensor.Storage {
        switch self {
        case .float32(let v): .float32(Array(v[r]))
        case .float64(let v): .float64(Array(v[r]))
        case .int64(let v): .int64(Array(v[r]))
        case .int32(let v): .int32(Array(v[r]))
        case .bool(let v): .bool(Array(v[r]))
        case .string(let v): .string(Array(v[r]))
        case .uint8(let v): .uint8(Array(v[r]))
        case .int8(let v): .int8(Array(v[r]))
        }
    }
}
