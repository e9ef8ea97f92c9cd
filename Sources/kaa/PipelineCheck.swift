import Foundation
import KaaEngine
import KaaSnapshot

extension BuildOptions {
    /// Parses the pipeline and checks it against the model, as the node will when it serves
    /// the snapshot; refuses with the step and field at fault.
    static func checkPipeline(_ text: String, file: String, model path: String) throws(SnapshotError) {
        let pipeline: Pipeline
        do { pipeline = try Pipeline(yaml: text) } catch {
            throw SnapshotError(.invalidPipeline, "pipeline `\(file)`: \(error.message)")
        }
        guard let bytes = FileManager.default.contents(atPath: path) else {
            throw SnapshotError(.io, "cannot read model file `\(path)`")
        }
        let model: Model
        do { model = try Model(onnx: bytes) } catch {
            let message = (error as? EngineError)?.message ?? "\(error)"
            throw SnapshotError(.invalidPipeline, "pipeline `\(file)` cannot be checked: the model `\(path)` does not load: \(message)")
        }
        do { _ = try Scorer(model: model, pipeline: pipeline) } catch {
            throw SnapshotError(.invalidPipeline, "pipeline `\(file)` does not fit the model: \(error.message)")
        }
    }
}
