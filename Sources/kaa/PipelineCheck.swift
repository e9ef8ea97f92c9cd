import Foundation
import KaaEngine
import KaaNode
import KaaSnapshot

extension BuildOptions {
    /// Parses the pipeline and checks it against the model, as the node will when it serves
    /// the snapshot; refuses with the step and field at fault. Returns the signature clients
    /// see through the pipeline, for the manifest.
    static func checkPipeline(_ text: String, file: String, model path: String) throws(SnapshotError) -> SnapshotManifest.ModelSignature {
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
        let scorer: Scorer
        do { scorer = try Scorer(model: model, pipeline: pipeline) } catch {
            throw SnapshotError(.invalidPipeline, "pipeline `\(file)` does not fit the model: \(error.message)")
        }
        // Values the pipeline passes through unchanged keep the graph's description.
        let graph = try ONNXSignatureReader.read(path: path)
        let graphValues = Dictionary((graph.inputs + graph.outputs).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func describe(_ s: KaaEngine.TensorSignature) -> KaaSnapshot.TensorSignature {
            if s.isSequenceOfMaps, let g = graphValues[s.name] { return g }
            return manifestSignature(s)
        }
        return .init(inputs: scorer.inputs.map(describe), outputs: scorer.outputs.map(describe))
    }

    /// An engine signature as the manifest writes it: the protocol's datatype names, -1 for a
    /// dimension each call chooses; a sequence of maps (ZipMap) keeps its kind.
    static func manifestSignature(_ s: KaaEngine.TensorSignature) -> KaaSnapshot.TensorSignature {
        if s.isSequenceOfMaps {
            return .init(name: s.name, kind: .sequence, dtype: "seq(map(?,\(s.dtype.map(OIPDatatype.name) ?? "?")))", shape: nil)
        }
        let shape = s.shape?.map { d -> Int64 in if case .fixed(let n) = d { Int64(n) } else { -1 } }
        return .init(name: s.name, kind: .tensor, dtype: s.dtype.map(OIPDatatype.name) ?? "?", shape: shape)
    }
}
