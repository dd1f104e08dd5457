package dev.mobex.verify;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;

import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Runs {@link MobexVerifier} over mobex's conformance vectors (scripts/make_conformance_vectors.py).
 *
 * <p>Usage: {@code java -cp classes:json-android.jar dev.mobex.verify.Main VECTORS_DIR}. Prints one
 * JSON object per line: {"name", "result": "accept"|"reject", "version" (the release installed),
 * "reason"} for each case, then {"bucket_mismatches": n} for the rollout bucket vectors. The exit
 * code is 0 when every case's result (and "expect_version", where given) and every bucket equal
 * the vectors', 1 otherwise, 2 on a usage error.
 */
public final class Main {
    private Main() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 1) {
            System.err.println("usage: Main VECTORS_DIR");
            System.exit(2);
        }
        File dir = new File(args[0]);
        JSONObject doc = new JSONObject(read(new File(dir, "vectors.json")));
        JSONArray cases = doc.getJSONArray("cases");
        int mismatches = 0;
        for (int i = 0; i < cases.length(); i++) {
            JSONObject c = cases.getJSONObject(i);
            String result;
            String version = "";
            String reason = "";
            try {
                version = run(dir, c).selected.version;
                result = "accept";
            } catch (MobexVerifier.Rejected e) {
                result = "reject";
                reason = e.getMessage();
            }
            if (!result.equals(c.getString("expect"))) mismatches++;
            if (result.equals("accept") && c.has("expect_version") && !version.equals(c.getString("expect_version"))) {
                mismatches++;
            }
            JSONObject line = new JSONObject();
            line.put("name", c.getString("name"));
            line.put("result", result);
            line.put("version", version);
            line.put("reason", reason);
            System.out.println(line.toString());
        }
        int bucketMismatches = checkBuckets(doc.optJSONArray("buckets"));
        JSONObject summary = new JSONObject();
        summary.put("bucket_mismatches", bucketMismatches);
        System.out.println(summary.toString());
        System.exit(mismatches == 0 && bucketMismatches == 0 ? 0 : 1);
    }

    static MobexVerifier.Pointer run(File dir, JSONObject c) throws Exception {
        Trust.Root root = root(dir, c);
        JSONObject req = c.getJSONObject("request");
        byte[] pointer = Files.readAllBytes(new File(dir, c.getString("pointer")).toPath());
        MobexVerifier.Pointer p = MobexVerifier.verifyPointer(pointer, root, req.getString("model"),
                req.getString("channel"), req.getString("platform"), c.getLong("now"), c.getLong("last_sequence"),
                optString(c, "installed_version"), optString(c, "device_id"), optString(c, "app_version"));
        if (!c.isNull("bundle")) MobexVerifier.verifyBundle(new File(dir, c.getString("bundle")), p, root);
        return p;
    }

    /** The pinned keys, or the pin plus the rotation chain in the case's roots folder (trust/N.root.json). */
    static Trust.Root root(File dir, JSONObject c) throws Exception {
        if (!c.has("trust")) {
            return Trust.pinKeys(read(new File(dir, c.getString("channel_key"))),
                    read(new File(dir, c.getString("release_key"))));
        }
        JSONObject t = c.getJSONObject("trust");
        File pin = new File(dir, t.getString("pin"));
        Trust.Root start = pin.getName().endsWith(".json") ? Trust.pinRootJson(Files.readAllBytes(pin.toPath()))
                : Trust.pinKey(read(pin));
        File roots = new File(dir, t.getString("roots"));
        return Trust.resolve(start, version -> {
            File f = new File(roots, version + ".root.json");
            return f.isFile() ? Files.readAllBytes(f.toPath()) : null;
        }, c.getLong("now"));
    }

    static int checkBuckets(JSONArray buckets) throws Exception {
        int bad = 0;
        for (int i = 0; buckets != null && i < buckets.length(); i++) {
            JSONObject b = buckets.getJSONObject(i);
            int got = Rollout.bucket(b.getString("model"), b.getString("channel"), b.getString("version"),
                    b.getString("device_id"));
            if (got != b.getInt("bucket")) bad++;
        }
        return bad;
    }

    static String optString(JSONObject c, String key) throws Exception {
        return c.isNull(key) ? null : c.getString(key);
    }

    static String read(File f) throws IOException {
        return new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
    }
}
