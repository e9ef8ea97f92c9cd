import Foundation

/// Two versions of the iris sample for the quality-gate tests, and labelled rows to compare
/// them on: version "same" is the sample as shipped; version "shifted" is the same model
/// behind a pipeline whose `scale` step moves the petal measurements up by 0.3 and 0.2 cm
/// before the model sees them, so it disagrees with the sample on borderline flowers.
public enum IrisGateFixture {
    /// Twelve rows of Fisher's iris data (rows 1-3, 51-53, 71, 84, 101-103, 134) with their
    /// true species. The shipped model gets 10 right (rows 71 and 84 it calls virginica); the
    /// shifted one 9 (row 53 too); the two agree on 11.
    public static let labelledRows = """
        {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2, "species": "setosa"}
        {"sepal_length": 4.9, "sepal_width": 3.0, "petal_length": 1.4, "petal_width": 0.2, "species": "setosa"}
        {"sepal_length": 4.7, "sepal_width": 3.2, "petal_length": 1.3, "petal_width": 0.2, "species": "setosa"}
        {"sepal_length": 7.0, "sepal_width": 3.2, "petal_length": 4.7, "petal_width": 1.4, "species": "versicolor"}
        {"sepal_length": 6.4, "sepal_width": 3.2, "petal_length": 4.5, "petal_width": 1.5, "species": "versicolor"}
        {"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 4.9, "petal_width": 1.5, "species": "versicolor"}
        {"sepal_length": 5.9, "sepal_width": 3.2, "petal_length": 4.8, "petal_width": 1.8, "species": "versicolor"}
        {"sepal_length": 6.0, "sepal_width": 2.7, "petal_length": 5.1, "petal_width": 1.6, "species": "versicolor"}
        {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5, "species": "virginica"}
        {"sepal_length": 5.8, "sepal_width": 2.7, "petal_length": 5.1, "petal_width": 1.9, "species": "virginica"}
        {"sepal_length": 7.1, "sepal_width": 3.0, "petal_length": 5.9, "petal_width": 2.1, "species": "virginica"}
        {"sepal_length": 6.3, "sepal_width": 2.8, "petal_length": 5.1, "petal_width": 1.5, "species": "virginica"}

        """

    /// The sample's pipeline with the shifting `scale` step first among its pre steps.
    public static func shiftedPipeline(_ samplePipeline: String) -> String {
        samplePipeline.replacingOccurrences(of: "\npre:\n", with: """

            pre:
              - step: scale
                fields: [petal_length, petal_width]
                mean: [-0.3, -0.2]
                scale: [1.0, 1.0]

            """)
    }
}
