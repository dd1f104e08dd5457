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
 * JSON object per line, {"name", "result": "accept"|"reject", "reason"}; the exit code is 0 when
 * every vector's result equals its "expect" field, 1 otherwise, 2 on a usage error.
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
            String reason = "";
            try {
                run(dir, c);
                result = "accept";
            } catch (MobexVerifier.Rejected e) {
                result = "reject";
                reason = e.getMessage();
            }
            if (!result.equals(c.getString("expect"))) mismatches++;
            JSONObject line = new JSONObject();
            line.put("name", c.getString("name"));
            line.put("result", result);
            line.put("reason", reason);
            System.out.println(line.toString());
        }
        System.exit(mismatches == 0 ? 0 : 1);
    }

    static void run(File dir, JSONObject c) throws Exception {
        String channelPem = read(new File(dir, c.getString("channel_key")));
        String releasePem = read(new File(dir, c.getString("release_key")));
        JSONObject req = c.getJSONObject("request");
        byte[] pointer = Files.readAllBytes(new File(dir, c.getString("pointer")).toPath());
        String installed = c.isNull("installed_version") ? null : c.getString("installed_version");
        MobexVerifier.Pointer p = MobexVerifier.verifyPointer(pointer, MobexVerifier.loadPublicKey(channelPem),
                MobexVerifier.loadPublicKey(releasePem), req.getString("model"), req.getString("channel"),
                req.getString("platform"), c.getLong("now"), c.getLong("last_sequence"), installed);
        if (!c.isNull("bundle")) {
            MobexVerifier.verifyBundle(new File(dir, c.getString("bundle")), p, MobexVerifier.loadPublicKey(releasePem),
                    MobexVerifier.keyId(releasePem));
        }
    }

    static String read(File f) throws IOException {
        return new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
    }
}
