/// The version of this Kaa build, reported by `kaa --version`, `GET /v2` and gossip metadata.
public enum KaaVersion {
    public static let string = "0.1.0"
}
