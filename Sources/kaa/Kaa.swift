import ArgumentParser
import KaaCore

/// `kaa`: the node, the publisher and the operator's tools in one executable.
@main
struct Kaa: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kaa",
        abstract: "Kaa: a decentralized model-serving cluster.",
        version: KaaVersion.string,
        subcommands: [NodeCommand.self, SnapshotCommand.self, PublishCommand.self, AliasCommand.self, PredictCommand.self, BatchCommand.self, MembersCommand.self, PlacementCommand.self, DeadLettersCommand.self, KeysCommand.self, TokensCommand.self, Ops.self])
}
