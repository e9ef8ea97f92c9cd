import ArgumentParser
import Foundation
import KaaCore
import KaaIO
import KaaSnapshot

/// `kaa publish`: uploads snapshots to a node.
struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Upload snapshots to a node.",
        discussion: """
        kaa publish FILE.kaa --to URL        upload one archive (a progress bar on a terminal)
        kaa publish DIR --to URL             upload every .kaa file in DIR, several at once
        kaa publish --model m.onnx --name N [--version V] ... --to URL
                                             build a snapshot and upload it
        Each archive is verified locally first. An upload a busy node refuses (503 with
        Retry-After) is sent again for up to two minutes. Exits non-zero if any upload was refused.
        """)

    @Argument(help: "A .kaa file or a directory of them.") var path: String?
    @OptionGroup var build: BuildOptions
    @Option(help: "With --model: the version (a positive integer); omit it to get the node's next free one.")
    var version: Int?
    @Option(help: "Uploads in flight at once when publishing a directory. Each upload is answered once `replication` holders have it, so the number in flight, more than bandwidth, sets the pace.") var parallel = 32
    @OptionGroup var node: NodeTarget

    func validate() throws {
        if path == nil && build.model == nil { throw ValidationError("give a .kaa file, a directory, or --model with --name") }
        if path != nil && build.model != nil { throw ValidationError("give either a path or --model, not both") }
        if build.model != nil && build.name == nil { throw ValidationError("--model needs --name") }
        if let version, version <= 0 { throw ValidationError("--version must be a positive integer") }
        if parallel < 1 { throw ValidationError("--parallel must be at least 1") }
        try build.validate()
    }

    func run() async throws {
        let address = try node.address
        let client = HTTPClient()
        defer { client.shutdown() }
        if build.model != nil {
            let temp = NSTemporaryDirectory() + "kaa-publish-\(getpid()).kaa"
            defer { unlink(temp) }
            do { _ = try build.build(version: version, to: temp) } catch {
                throw CommandFailure("cannot build the snapshot: \(error)")
            }
            try await publishOne(temp, client: client, address: address, progress: true)
            return
        }
        var isDirectory: ObjCBool = false
        guard let path, FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw CommandFailure("`\(path ?? "")` does not exist")
        }
        if isDirectory.boolValue {
            try await publishDirectory(path, client: client, address: address)
        } else {
            try await publishOne(path, client: client, address: address, progress: true)
        }
    }

    private func publishOne(_ file: String, client: HTTPClient, address: HostPort, progress: Bool) async throws {
        let result = await Uploader(client: client, address: address, deadline: node.deadline, token: try node.token).upload(file, progress: progress)
        switch result {
        case .success(let uploaded): print(uploaded.line)
        case .failure(let error): throw error
        }
    }

    private func publishDirectory(_ directory: String, client: HTTPClient, address: HostPort) async throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasSuffix(".kaa") }.sorted().map { directory + "/" + $0 }
        guard !files.isEmpty else { throw CommandFailure("no .kaa files in \(directory)") }
        let uploader = Uploader(client: client, address: address, deadline: node.deadline, token: try node.token)
        let start = Date()
        let bar = ProgressBar(total: files.count, label: "publishing")
        var stored = 0, present = 0, failures: [String] = []
        var done = 0
        await withTaskGroup(of: (String, Result<Uploaded, CommandFailure>).self) { group in
            var next = 0
            func launch() {
                guard next < files.count else { return }
                let file = files[next]
                next += 1
                group.addTask { (file, await uploader.upload(file, progress: false)) }
            }
            for _ in 0..<min(parallel, files.count) { launch() }
            for await (file, result) in group {
                done += 1
                bar.update(done)
                switch result {
                case .success(let uploaded): if uploaded.stored { stored += 1 } else { present += 1 }
                case .failure(let error): failures.append("\((file as NSString).lastPathComponent): \(error.description)")
                }
                launch()
            }
        }
        bar.finish()
        let seconds = Date().timeIntervalSince(start)
        for failure in failures { FileHandle.standardError.write(Data("error: \(failure)\n".utf8)) }
        print("published \(files.count) snapshots to \(node.url) in \(String(format: "%.1f", seconds)) s: "
              + "\(stored) stored, \(present) already present, \(failures.count) failed")
        if !failures.isEmpty { throw ExitCode(1) }
    }
}

/// Uploads one verified archive with a streamed body.
struct Uploader: Sendable {
    let client: HTTPClient
    let address: HostPort
    let deadline: Duration
    /// The bearer token sent with each upload, if any.
    let token: String?

    func upload(_ file: String, progress: Bool) async -> Result<Uploaded, CommandFailure> {
        let archive: VerifiedArchive
        do { archive = try SnapshotArchive.verify(path: file) } catch {
            return .failure(CommandFailure("\(file): \(error.message)"))
        }
        let manifest = archive.manifest
        // A node at its `max_concurrent_uploads` refuses with 503 and Retry-After: the upload
        // waits about that long and is sent again, for up to two minutes.
        let giveUp = Date().addingTimeInterval(120)
        let length = Int(archive.archiveBytes)
        var request = HTTPRequest(method: .put, target: manifest.isDraft
            ? "/kaa/v1/snapshots/\(manifest.name)" : "/kaa/v1/snapshots/\(manifest.name)/\(manifest.version)")
        request.headers.add("content-type", "application/vnd.kaa.snapshot")
        if let token { request.headers.add("authorization", "Bearer \(token)") }
        if !manifest.isDraft { request.headers.add("kaa-snapshot-digest", archive.digest.description) }
        var response: HTTPClientResponse
        while true {
            // Each try reads the file from its start.
            guard let handle = FileHandle(forReadingAtPath: file) else {
                return .failure(CommandFailure("cannot open \(file)"))
            }
            defer { try? handle.close() }
            let bar = progress ? ProgressBar(total: length, label: manifest.isDraft ? manifest.name : "\(manifest.name)@\(manifest.version)") : nil
            let reader = ChunkReader(handle: handle)
            let stream = HTTPClientBodyStream(length: length, next: { try reader.next() }, progress: { bar?.update($0) })
            do { response = try await client.execute(request, bodyStream: stream, to: address, deadline: deadline) } catch {
                bar?.finish()
                return .failure(CommandFailure("\(file): \(error.message)"))
            }
            bar?.finish()
            guard response.status == 503, let after = response.headers["retry-after"].flatMap(Double.init), Date() < giveUp else { break }
            try? await Task.sleep(for: .milliseconds(Int(min(max(after, 0.05), 2) * 1000 * Double.random(in: 0.5...1))))
        }
        guard response.status == 200 || response.status == 201 || response.status == 202,
              let object = response.json, let snapshot = object["snapshot"] as? [String: Any],
              let name = snapshot["name"] as? String, let version = snapshot["version"] as? Int,
              let digest = snapshot["digest"] as? String else {
            return .failure(CommandFailure("\(file): refused (HTTP \(response.status)): \(response.errorMessage)"))
        }
        let stored = (object["outcome"] as? String) == "stored"
        var line = "\(name)@\(version) \(digest) \(stored ? "stored" : "already present")"
        // In a cluster the node answers once the snapshot's holders have it (the write quorum).
        if let holders = object["holders"] as? [String] {
            let ready = object["ready_holders"] as? [String] ?? []
            line += " on \(ready.joined(separator: ", "))"
            if response.status == 202 {
                line += "; still copying to \(holders.filter { !ready.contains($0) }.joined(separator: ", ")) (the node's publish_timeout passed)"
            } else if object["replicated"] as? Bool == false {
                line += "; under-replicated: fewer live nodes than the replication factor, copied as nodes join"
            }
        }
        return .success(Uploaded(line: line, stored: stored))
    }
}

/// One upload's outcome: the line printed for it, and whether the node stored it anew.
struct Uploaded: Sendable {
    var line: String
    var stored: Bool
}

/// Reads a file in 1 MiB pieces for an upload; used by one upload at a time.
final class ChunkReader: @unchecked Sendable {
    // SAFETY: the HTTP client calls `next` only on its loop, one call at a time.
    private let handle: FileHandle
    init(handle: FileHandle) { self.handle = handle }
    func next() throws -> [UInt8]? {
        let data = try handle.read(upToCount: 1 << 20) ?? Data()
        return data.isEmpty ? nil : Array(data)
    }
}

