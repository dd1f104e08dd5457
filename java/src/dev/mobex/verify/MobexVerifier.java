package dev.mobex.verify;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.MessageDigest;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.X509EncodedKeySpec;
import java.text.ParseException;
import java.text.SimpleDateFormat;
import java.util.Base64;
import java.util.Enumeration;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TimeZone;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Reference verifier for mobex channel pointers and bundles, using only what Android ships:
 * java.security (SHA-256, SHA256withECDSA on P-256), java.util.zip, java.util.Base64 (API 26+;
 * use android.util.Base64 below that) and org.json.
 *
 * <p>An app pins the registry's root public key (or a root.json it ships), walks the rotation chain
 * with {@link Trust#resolve}, stores the newest root and the last pointer sequence it accepted, and
 * calls {@link #verifyPointer} then {@link #verifyBundle}. {@link Trust#pinKeys} pins channel and
 * release keys directly instead (rotation then needs an app update). Any problem throws
 * {@link Rejected}; nothing is extracted here (entries are hashed in memory-bounded streams), so an
 * app extracts only after both calls succeed.
 */
public final class MobexVerifier {
    public static final String POINTER_TYPE = "application/vnd.mobex.channel-pointer+json";
    public static final String POINTER_SCHEMA = "https://mobex.dev/schemas/channel-pointer/v1";
    /** Pointers with min_app_version and/or rollout; v1 pointers never carry them. */
    public static final String POINTER_SCHEMA_V2 = "https://mobex.dev/schemas/channel-pointer/v2";
    static final String SEMVER = "(0|[1-9]\\d*)\\.(0|[1-9]\\d*)\\.(0|[1-9]\\d*)"
            + "(?:-((?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\\.(?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
            + "(?:\\+([0-9a-zA-Z-]+(?:\\.[0-9a-zA-Z-]+)*))?";
    public static final String MANIFEST_SCHEMA = "https://mobex.dev/schemas/bundle-manifest/v1";
    public static final String SIGSTORE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json";
    public static final String INTOTO_TYPE = "application/vnd.in-toto+json";
    public static final String STATEMENT_TYPE = "https://in-toto.io/Statement/v1";
    public static final String PREDICATE_TYPE = "https://model_signing/signature/v1.0";
    public static final String SIGNATURE_FILE = "signature.sigstore.json";
    public static final String MANIFEST_FILE = "manifest.json";
    public static final long SKEW_SECONDS = 300;
    public static final long MAX_ENTRY_BYTES = 2L << 30;
    public static final int MAX_ENTRIES = 100_000;
    public static final int MAX_JSON_BYTES = 16 << 20;

    /** Thrown for every reason to refuse a pointer or a bundle. */
    public static final class Rejected extends Exception {
        private static final long serialVersionUID = 1L;

        public Rejected(String message) {
            super(message);
        }
    }

    /** A version, its bundle (layout path, sha256, size) and the oldest app version that may load it. */
    public static final class Release {
        public final String version, path, sha256, minAppVersion;
        public final long size;

        Release(JSONObject r, String model, String platform) throws Rejected {
            version = str(r, "version");
            if (!version.matches(SEMVER)) throw new Rejected("version is not SemVer");
            JSONObject b = obj(r, "bundle");
            path = str(b, "path");
            sha256 = str(b, "sha256");
            size = integer(b, "size");
            minAppVersion = r.has("min_app_version") ? str(r, "min_app_version") : null;
            if (minAppVersion != null && !minAppVersion.matches(SEMVER)) throw new Rejected("min_app_version is not SemVer");
            String expectedPath = "models/" + model + "/versions/" + version + "/" + model + "-" + version + "-"
                    + platform + ".zip";
            if (!path.equals(expectedPath) || model.contains("/")) throw new Rejected("bundle path is not the registry layout's");
            if (!sha256.matches("[0-9a-f]{64}") || size < 1) throw new Rejected("bad bundle digest or size");
        }
    }

    /** A verified pointer: its release, the staged rollout's fallback (or null), and what this device gets. */
    public static final class Pointer {
        public final String model, channel, platform;
        public final long sequence, expires;
        public final boolean downgrade;
        public final Release primary;
        public final Release fallback; // null unless staged
        public final int rolloutPpm; // 1..999999 when staged, else 1_000_000
        /** What this device and app install (set by verifyPointer: primary or fallback). */
        public Release selected;

        Pointer(JSONObject p) throws Rejected {
            String schema = str(p, "schema");
            if (!POINTER_SCHEMA.equals(schema) && !POINTER_SCHEMA_V2.equals(schema)) {
                throw new Rejected("unknown pointer schema");
            }
            model = str(p, "model");
            channel = str(p, "channel");
            platform = str(p, "platform");
            sequence = integer(p, "sequence");
            expires = time(str(p, "expires"));
            time(str(p, "published"));
            Object d = p.opt("downgrade");
            if (d != null && !(d instanceof Boolean)) throw new Rejected("downgrade must be a boolean");
            downgrade = Boolean.TRUE.equals(d);
            primary = new Release(p, model, platform);
            boolean staged = p.has("rollout");
            if (POINTER_SCHEMA.equals(schema) && (staged || p.has("min_app_version"))) {
                throw new Rejected("rollout and min_app_version need pointer schema v2");
            }
            if (staged) {
                JSONObject r = obj(p, "rollout");
                long ppm = integer(r, "fraction_ppm");
                if (ppm < 1 || ppm >= Rollout.PPM) throw new Rejected("rollout fraction_ppm out of range");
                rolloutPpm = (int) ppm;
                fallback = new Release(obj(r, "fallback"), model, platform);
                if (compareSemver(fallback.version, primary.version) >= 0) {
                    throw new Rejected("rollout fallback must be older than the rolled-out version");
                }
            } else {
                rolloutPpm = Rollout.PPM;
                fallback = null;
            }
        }
    }

    private MobexVerifier() {}

    // --- keys and DSSE -------------------------------------------------------------------------

    public static PublicKey loadPublicKey(String pem) throws Rejected {
        String body = pem.replace("-----BEGIN PUBLIC KEY-----", "").replace("-----END PUBLIC KEY-----", "")
                .replaceAll("\\s", "");
        try {
            return KeyFactory.getInstance("EC").generatePublic(new X509EncodedKeySpec(Base64.getDecoder().decode(body)));
        } catch (GeneralSecurityException | IllegalArgumentException e) {
            throw new Rejected("not an EC public key: " + e.getMessage());
        }
    }

    /** The key id mobex uses: hex SHA-256 of the PEM text (equal to model-signing's publicKey.hint). */
    public static String keyId(String pem) {
        return hex(sha256(pem.getBytes(StandardCharsets.US_ASCII)));
    }

    public static byte[] pae(String type, byte[] payload) {
        byte[] t = type.getBytes(StandardCharsets.UTF_8);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        byte[] head = ("DSSEv1 " + t.length + " ").getBytes(StandardCharsets.US_ASCII);
        out.write(head, 0, head.length);
        out.write(t, 0, t.length);
        byte[] mid = (" " + payload.length + " ").getBytes(StandardCharsets.US_ASCII);
        out.write(mid, 0, mid.length);
        out.write(payload, 0, payload.length);
        return out.toByteArray();
    }

    /**
     * The payload of a DSSE envelope, if `key` made one of its signatures over PAE(type, payload); key
     * ids are not consulted (model-signing bundles). Registry documents use {@link Trust#verifyEnvelope}.
     */
    public static byte[] verifyEnvelope(JSONObject env, String payloadType, PublicKey key) throws Rejected {
        if (!payloadType.equals(str(env, "payloadType"))) {
            throw new Rejected("payload type is " + env.opt("payloadType") + ", expected " + payloadType);
        }
        byte[] payload = b64(str(env, "payload"));
        byte[] message = pae(payloadType, payload);
        JSONArray sigs = arr(env, "signatures");
        if (sigs.length() == 0 || sigs.length() > 16) throw new Rejected("bad number of signatures");
        for (int i = 0; i < sigs.length(); i++) {
            JSONObject s = sigs.optJSONObject(i);
            if (s == null) throw new Rejected("signature entry is not an object");
            try {
                Signature v = Signature.getInstance("SHA256withECDSA");
                v.initVerify(key);
                v.update(message);
                if (v.verify(b64(str(s, "sig")))) return payload;
            } catch (GeneralSecurityException e) {
                // a malformed DER signature: not a valid signature by this key, try the next one
            }
        }
        throw new Rejected("no valid signature by the pinned key");
    }

    // --- the pointer (bundles.md 5.2 steps 1-5) -------------------------------------------------

    /**
     * Steps 1-5: signature by the root's channel keys, model/channel/platform, expiry, sequence,
     * which release this device gets (rollout bucket, min_app_version), downgrade.
     *
     * @param root from {@link Trust#resolve} (or a pin)
     * @param lastSequence the highest sequence accepted before for this pointer and key (0: none)
     * @param installedVersion the installed bundle's version, or null
     * @param deviceId the stable device id for staged rollouts, or null (then: the fallback)
     * @param appVersion this app's SemVer version, or null (then a min_app_version is a rejection)
     */
    public static Pointer verifyPointer(byte[] envelope, Trust.Root root, String model, String channel,
            String platform, long nowEpochSeconds, long lastSequence, String installedVersion, String deviceId,
            String appVersion) throws Rejected {
        if (envelope.length > (1 << 20)) throw new Rejected("pointer too large");
        JSONObject env = json(envelope);
        byte[] payload = Trust.verifyEnvelope(env, POINTER_TYPE, root.roleKeys("channel"), root.threshold("channel"));
        Pointer p = new Pointer(json(payload));
        if (!p.model.equals(model) || !p.channel.equals(channel) || !p.platform.equals(platform)) {
            throw new Rejected("pointer is for " + p.model + "/" + p.channel + "/" + p.platform);
        }
        if (nowEpochSeconds > p.expires + SKEW_SECONDS) throw new Rejected("pointer expired");
        if (p.sequence < 1) throw new Rejected("sequence must be positive");
        if (p.sequence < lastSequence) throw new Rejected("sequence went back: replayed pointer");
        if (appVersion != null && !appVersion.matches(SEMVER)) throw new Rejected("app version is not SemVer");
        p.selected = Rollout.select(p, deviceId, appVersion);
        if (installedVersion != null && compareSemver(p.selected.version, installedVersion) < 0 && !p.downgrade) {
            throw new Rejected("older version without downgrade flag");
        }
        if (p.downgrade) {
            Trust.verifyEnvelope(env, POINTER_TYPE, root.roleKeys("release"), root.threshold("release"));
        }
        return p;
    }

    // --- the bundle (steps 6-9) ---------------------------------------------------------------

    /** Steps 6-9 for the selected release: digest and size, model-signing signature by a release key of root. */
    public static JSONObject verifyBundle(File zip, Pointer p, Trust.Root root) throws Rejected, IOException {
        Release rel = p.selected;
        if (zip.length() != rel.size) throw new Rejected("archive size differs from the pointer");
        if (!hex(sha256File(zip, rel.size)).equals(rel.sha256)) throw new Rejected("archive sha256 differs from the pointer");
        Map<String, String> digests = new HashMap<>();
        Map<String, Long> sizes = new HashMap<>();
        byte[] signature = null;
        byte[] manifestBytes = null;
        try (ZipFile zf = new ZipFile(zip)) {
            Set<String> seen = new HashSet<>();
            Set<String> folded = new HashSet<>();
            int count = 0;
            Enumeration<? extends ZipEntry> entries = zf.entries();
            while (entries.hasMoreElements()) {
                ZipEntry e = entries.nextElement();
                if (++count > MAX_ENTRIES) throw new Rejected("too many entries");
                String name = e.getName();
                checkName(name);
                if (!seen.add(name) || !folded.add(name.toLowerCase(Locale.ROOT))) {
                    throw new Rejected("duplicate entry " + name);
                }
                if (e.isDirectory()) continue;
                if (e.getSize() < 0 || e.getSize() > MAX_ENTRY_BYTES) throw new Rejected("bad size for " + name);
                if (name.equals(SIGNATURE_FILE)) {
                    signature = readCapped(zf, e, MAX_JSON_BYTES);
                    continue;
                }
                MessageDigest md = digest();
                long n = 0;
                ByteArrayOutputStream keep = name.equals(MANIFEST_FILE) ? new ByteArrayOutputStream() : null;
                try (InputStream in = zf.getInputStream(e)) {
                    byte[] buf = new byte[1 << 16];
                    int r;
                    while ((r = in.read(buf)) > 0) {
                        n += r;
                        if (n > e.getSize()) throw new Rejected(name + " holds more than its declared size");
                        md.update(buf, 0, r);
                        if (keep != null) {
                            if (n > MAX_JSON_BYTES) throw new Rejected("manifest too large");
                            keep.write(buf, 0, r);
                        }
                    }
                }
                if (n != e.getSize()) throw new Rejected(name + " is shorter than declared");
                digests.put(name, hex(md.digest()));
                sizes.put(name, n);
                if (keep != null) manifestBytes = keep.toByteArray();
            }
        }
        if (signature == null) throw new Rejected("bundle is not signed");
        if (manifestBytes == null) throw new Rejected("bundle has no manifest.json");

        JSONObject sig = json(signature);
        if (!SIGSTORE_MEDIA_TYPE.equals(sig.opt("mediaType"))) throw new Rejected("unknown signature media type");
        String hint = str(obj(obj(sig, "verificationMaterial"), "publicKey"), "hint");
        PublicKey releaseKey = root.roleKeys("release").get(hint);
        if (releaseKey == null) throw new Rejected("bundle signed by another key");
        JSONObject statement = json(verifyEnvelope(obj(sig, "dsseEnvelope"), INTOTO_TYPE, releaseKey));
        if (!STATEMENT_TYPE.equals(statement.opt("_type"))) throw new Rejected("not an in-toto statement v1");
        if (!PREDICATE_TYPE.equals(statement.opt("predicateType"))) throw new Rejected("wrong predicate type");
        JSONObject predicate = obj(statement, "predicate");
        JSONObject ser = obj(predicate, "serialization");
        if (!"files".equals(ser.opt("method"))) throw new Rejected("serialization method is not files");
        if (!"sha256".equals(ser.opt("hash_type"))) throw new Rejected("hash type is not sha256");
        if (Boolean.TRUE.equals(ser.opt("allow_symlinks"))) throw new Rejected("signature allows symlinks");
        JSONArray ignore = ser.optJSONArray("ignore_paths");
        for (int i = 0; ignore != null && i < ignore.length(); i++) {
            String path = ignore.optString(i);
            if (!path.equals(SIGNATURE_FILE) && !path.startsWith(".git")) throw new Rejected("unsigned path " + path);
        }
        JSONArray resources = arr(predicate, "resources");
        Map<String, String> signed = new HashMap<>();
        for (int i = 0; i < resources.length(); i++) {
            JSONObject r = resources.optJSONObject(i);
            if (r == null) throw new Rejected("resource is not an object");
            if (!"sha256".equals(r.opt("algorithm"))) throw new Rejected("resource not hashed with sha256");
            if (signed.put(str(r, "name"), str(r, "digest")) != null) throw new Rejected("resource listed twice");
        }
        if (!signed.equals(digests)) throw new Rejected("files differ from the signed list (changed, extra or missing)");

        JSONObject manifest = json(manifestBytes);
        if (!MANIFEST_SCHEMA.equals(manifest.opt("schema"))) throw new Rejected("unknown manifest schema");
        if (!p.model.equals(manifest.opt("name")) || !rel.version.equals(manifest.opt("version"))
                || !p.platform.equals(manifest.opt("platform"))) {
            throw new Rejected("manifest name/version/platform differ from the pointer");
        }
        JSONArray files = arr(manifest, "files");
        Set<String> listed = new HashSet<>();
        for (int i = 0; i < files.length(); i++) {
            JSONObject f = files.optJSONObject(i);
            if (f == null) throw new Rejected("manifest file entry is not an object");
            String path = str(f, "path");
            if (!str(f, "sha256").equals(digests.get(path)) || !Long.valueOf(integer(f, "size")).equals(sizes.get(path))) {
                throw new Rejected("manifest entry " + path + " differs from the bundle");
            }
            listed.add(path);
        }
        Set<String> expected = new HashSet<>(digests.keySet());
        expected.remove(MANIFEST_FILE);
        if (!listed.equals(expected)) throw new Rejected("manifest files list differs from the bundle");
        return manifest;
    }

    // --- helpers ------------------------------------------------------------------------------

    static void checkName(String name) throws Rejected {
        String n = name.endsWith("/") ? name.substring(0, name.length() - 1) : name;
        if (n.isEmpty() || n.startsWith("/") || n.contains("\\") || n.contains(":")) throw new Rejected("unsafe entry " + name);
        for (String part : n.split("/", -1)) {
            if (part.isEmpty() || part.equals(".") || part.equals("..")) throw new Rejected("unsafe entry " + name);
        }
        for (int i = 0; i < n.length(); i++) {
            if (n.charAt(i) < 0x20 || n.charAt(i) == 0x7f) throw new Rejected("control character in entry name");
        }
    }

    /** SemVer 2.0 precedence on major.minor.patch and pre-release (build metadata ignored). */
    public static int compareSemver(String a, String b) throws Rejected {
        String[] x = core(a), y = core(b);
        for (int i = 0; i < 3; i++) {
            int c = new java.math.BigInteger(x[i]).compareTo(new java.math.BigInteger(y[i]));
            if (c != 0) return c;
        }
        if (x[3] == null || y[3] == null) return x[3] == null ? (y[3] == null ? 0 : 1) : -1;
        String[] p = x[3].split("\\."), q = y[3].split("\\.");
        for (int i = 0; i < Math.min(p.length, q.length); i++) {
            boolean pn = p[i].matches("\\d+"), qn = q[i].matches("\\d+");
            int c = pn && qn ? new java.math.BigInteger(p[i]).compareTo(new java.math.BigInteger(q[i]))
                    : pn ? -1 : qn ? 1 : p[i].compareTo(q[i]);
            if (c != 0) return c;
        }
        return Integer.compare(p.length, q.length);
    }

    private static String[] core(String v) throws Rejected {
        String s = v.split("\\+", 2)[0];
        String[] parts = s.split("-", 2);
        String[] nums = parts[0].split("\\.");
        if (nums.length != 3) throw new Rejected("not SemVer: " + v);
        for (String n : nums) if (!n.matches("0|[1-9]\\d*")) throw new Rejected("not SemVer: " + v);
        return new String[] {nums[0], nums[1], nums[2], parts.length > 1 ? parts[1] : null};
    }

    static long time(String s) throws Rejected {
        if (!s.matches("\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}Z")) throw new Rejected("bad time " + s);
        SimpleDateFormat f = new SimpleDateFormat("yyyy-MM-dd'T'HH:mm:ss'Z'", Locale.ROOT);
        f.setTimeZone(TimeZone.getTimeZone("UTC"));
        f.setLenient(false);
        try {
            return f.parse(s).getTime() / 1000;
        } catch (ParseException e) {
            throw new Rejected("bad time " + s);
        }
    }

    /** The names of an object's members (Android's org.json has no typed keySet). */
    static Set<String> names(JSONObject o) {
        Set<String> out = new HashSet<>();
        JSONArray names = o.names();
        for (int i = 0; names != null && i < names.length(); i++) out.add(names.optString(i));
        return out;
    }

    static JSONObject json(byte[] data) throws Rejected {
        try {
            return new JSONObject(new String(data, StandardCharsets.UTF_8));
        } catch (JSONException e) {
            throw new Rejected("invalid JSON: " + e.getMessage());
        }
    }

    static String str(JSONObject o, String key) throws Rejected {
        Object v = o.opt(key);
        if (!(v instanceof String)) throw new Rejected(key + " must be a string");
        return (String) v;
    }

    static long integer(JSONObject o, String key) throws Rejected {
        Object v = o.opt(key);
        if (!(v instanceof Integer || v instanceof Long)) throw new Rejected(key + " must be an integer");
        return ((Number) v).longValue();
    }

    static JSONObject obj(JSONObject o, String key) throws Rejected {
        Object v = o.opt(key);
        if (!(v instanceof JSONObject)) throw new Rejected(key + " must be an object");
        return (JSONObject) v;
    }

    static JSONArray arr(JSONObject o, String key) throws Rejected {
        Object v = o.opt(key);
        if (!(v instanceof JSONArray)) throw new Rejected(key + " must be an array");
        return (JSONArray) v;
    }

    static byte[] b64(String s) throws Rejected {
        try {
            return Base64.getDecoder().decode(s);
        } catch (IllegalArgumentException e) {
            throw new Rejected("invalid base64");
        }
    }

    static MessageDigest digest() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException(e);
        }
    }

    static byte[] sha256(byte[] data) {
        return digest().digest(data);
    }

    static byte[] sha256File(File f, long cap) throws IOException, Rejected {
        MessageDigest md = digest();
        long n = 0;
        try (InputStream in = new FileInputStream(f)) {
            byte[] buf = new byte[1 << 16];
            int r;
            while ((r = in.read(buf)) > 0) {
                n += r;
                if (n > cap) throw new Rejected("archive larger than the pointer says");
                md.update(buf, 0, r);
            }
        }
        return md.digest();
    }

    static byte[] readCapped(ZipFile zf, ZipEntry e, int cap) throws IOException, Rejected {
        if (e.getSize() > cap) throw new Rejected(e.getName() + " too large");
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        try (InputStream in = zf.getInputStream(e)) {
            byte[] buf = new byte[1 << 16];
            int r;
            while ((r = in.read(buf)) > 0) {
                if (out.size() + r > e.getSize()) throw new Rejected(e.getName() + " holds more than declared");
                out.write(buf, 0, r);
            }
        }
        if (out.size() != e.getSize()) throw new Rejected(e.getName() + " is shorter than declared");
        return out.toByteArray();
    }

    static String hex(byte[] b) {
        StringBuilder s = new StringBuilder(b.length * 2);
        for (byte x : b) s.append(String.format("%02x", x));
        return s.toString();
    }
}
