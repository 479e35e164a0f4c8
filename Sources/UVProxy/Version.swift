/// The proxy's version, as it names itself to games (GMCP `Core.Hello`) and in upgrade records.
public enum UVProxyVersion {
    public static let text = "0.12.0"
}
