package dev.mobex.verify;

import java.security.GeneralSecurityException;
import java.security.PublicKey;
import java.security.Signature;
import java.security.interfaces.ECPublicKey;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.json.JSONArray;
import org.json.JSONObject;

/**
 * root.json and its rotation chain (mobex/registry/trust.py), so an app pins one root key (or a
 * root.json it ships) and follows key rotations without an app update.
 *
 * <p>Walk: start from the pin (a root key is a virtual version 0 trusting that key for every role),
 * fetch trust/(N+1).root.json until there is none; each must be signed by a threshold of version
 * N's root keys and of its own, and say version N+1. The final root must not be expired. Persist
 * the newest verified root and start from it next time, so an old root cannot be replayed.
 */
public final class Trust {
    public static final String ROOT_TYPE = "application/vnd.mobex.registry-root+json";
    public static final String ROOT_SCHEMA = "https://mobex.dev/schemas/registry-root/v1";
    public static final int MAX_CHAIN_STEPS = 1000;
    public static final int MAX_ROOT_VERSION = 1_000_000;
    private static final List<String> ROLES = Arrays.asList("root", "release", "channel");

    private Trust() {}

    /** Which keys hold which role: a verified root.json, or a pin (version 0). */
    public static final class Root {
        public final long version;
        public final Long expires; // epoch seconds, or null
        final Map<String, PublicKey> keys;
        final Map<String, List<String>> roles;
        final Map<String, Integer> thresholds;

        Root(long version, Long expires, Map<String, PublicKey> keys, Map<String, List<String>> roles,
                Map<String, Integer> thresholds) {
            this.version = version;
            this.expires = expires;
            this.keys = Collections.unmodifiableMap(keys);
            this.roles = Collections.unmodifiableMap(roles);
            this.thresholds = Collections.unmodifiableMap(thresholds);
        }

        public Map<String, PublicKey> roleKeys(String role) {
            Map<String, PublicKey> out = new LinkedHashMap<>();
            for (String kid : roles.get(role)) out.put(kid, keys.get(kid));
            return out;
        }

        public int threshold(String role) {
            return thresholds.get(role);
        }
    }

    /** Supplies trust/N.root.json (null when the registry has no such file). */
    public interface Fetcher {
        byte[] fetch(int version) throws java.io.IOException;
    }

    /** Version 0 from one pinned root public key: that key holds every role. */
    public static Root pinKey(String pem) throws MobexVerifier.Rejected {
        return pinKeys(pem, pem);
    }

    /** Version 0 from separately pinned channel and release keys (no chain walk needed; root = release key). */
    public static Root pinKeys(String channelPem, String releasePem) throws MobexVerifier.Rejected {
        Map<String, PublicKey> keys = new HashMap<>();
        String channel = MobexVerifier.keyId(channelPem);
        String release = MobexVerifier.keyId(releasePem);
        keys.put(channel, p256(channelPem));
        keys.put(release, p256(releasePem));
        Map<String, List<String>> roles = new HashMap<>();
        roles.put("root", Collections.singletonList(release));
        roles.put("release", Collections.singletonList(release));
        roles.put("channel", Collections.singletonList(channel));
        Map<String, Integer> thresholds = new HashMap<>();
        for (String r : ROLES) thresholds.put(r, 1);
        return new Root(0, null, keys, roles, thresholds);
    }

    /** A root.json the app ships as its pin, checked against its own root keys. */
    public static Root pinRootJson(byte[] envelope) throws MobexVerifier.Rejected {
        JSONObject env = MobexVerifier.json(envelope);
        Root root = parse(MobexVerifier.b64(MobexVerifier.str(env, "payload")));
        verifyEnvelope(env, ROOT_TYPE, root.roleKeys("root"), root.threshold("root"));
        return root;
    }

    /** The next root: signed by a threshold of {@code trusted}'s root keys and of its own, version + 1. */
    public static Root next(Root trusted, byte[] envelope) throws MobexVerifier.Rejected {
        if (envelope.length > (1 << 20)) throw new MobexVerifier.Rejected("root.json too large");
        JSONObject env = MobexVerifier.json(envelope);
        byte[] payload = verifyEnvelope(env, ROOT_TYPE, trusted.roleKeys("root"), trusted.threshold("root"));
        Root root = parse(payload);
        if (root.version != trusted.version + 1) {
            throw new MobexVerifier.Rejected("root version " + root.version + ", expected " + (trusted.version + 1));
        }
        verifyEnvelope(env, ROOT_TYPE, root.roleKeys("root"), root.threshold("root"));
        return root;
    }

    /** Walk the chain from {@code start} as far as {@code fetcher} has files; reject an expired final root. */
    public static Root resolve(Root start, Fetcher fetcher, long nowEpochSeconds)
            throws MobexVerifier.Rejected, java.io.IOException {
        Root current = start;
        for (int i = 0; ; i++) {
            if (i >= MAX_CHAIN_STEPS) throw new MobexVerifier.Rejected("root chain too long");
            byte[] data = fetcher.fetch((int) current.version + 1);
            if (data == null) break;
            current = next(current, data);
        }
        if (current.expires != null && nowEpochSeconds > current.expires) {
            throw new MobexVerifier.Rejected("root.json version " + current.version + " expired");
        }
        return current;
    }

    /**
     * The DSSE payload, if at least {@code threshold} distinct keys of {@code trusted} signed it. A
     * signature whose keyid names a trusted key is tried with that key only, one without a keyid with
     * every key, one naming an unknown key is ignored (mobex/registry/dsse.py does the same).
     */
    public static byte[] verifyEnvelope(JSONObject env, String payloadType, Map<String, PublicKey> trusted,
            int threshold) throws MobexVerifier.Rejected {
        if (!payloadType.equals(MobexVerifier.str(env, "payloadType"))) {
            throw new MobexVerifier.Rejected("payload type is " + env.opt("payloadType") + ", expected " + payloadType);
        }
        byte[] payload = MobexVerifier.b64(MobexVerifier.str(env, "payload"));
        byte[] message = MobexVerifier.pae(payloadType, payload);
        JSONArray sigs = MobexVerifier.arr(env, "signatures");
        if (sigs.length() == 0 || sigs.length() > 16) throw new MobexVerifier.Rejected("bad number of signatures");
        Set<String> good = new HashSet<>();
        for (int i = 0; i < sigs.length(); i++) {
            JSONObject s = sigs.optJSONObject(i);
            if (s == null) throw new MobexVerifier.Rejected("signature entry is not an object");
            byte[] der = MobexVerifier.b64(MobexVerifier.str(s, "sig"));
            Object hint = s.opt("keyid");
            if (hint != null && hint != JSONObject.NULL && !(hint instanceof String)) {
                throw new MobexVerifier.Rejected("keyid must be a string");
            }
            String kid = hint instanceof String && !((String) hint).isEmpty() ? (String) hint : null;
            List<String> candidates = kid == null ? new ArrayList<>(trusted.keySet())
                    : trusted.containsKey(kid) ? Collections.singletonList(kid) : Collections.<String>emptyList();
            for (String cand : candidates) {
                if (!good.contains(cand) && valid(trusted.get(cand), message, der)) {
                    good.add(cand);
                    break;
                }
            }
        }
        if (good.size() < Math.max(threshold, 1)) {
            throw new MobexVerifier.Rejected("not signed by " + threshold + " trusted key(s): " + good.size() + " valid");
        }
        return payload;
    }

    private static boolean valid(PublicKey key, byte[] message, byte[] der) {
        try {
            Signature v = Signature.getInstance("SHA256withECDSA");
            v.initVerify(key);
            v.update(message);
            return v.verify(der);
        } catch (GeneralSecurityException e) {
            return false; // a malformed DER signature is not a valid one
        }
    }

    static Root parse(byte[] payload) throws MobexVerifier.Rejected {
        JSONObject doc = MobexVerifier.json(payload);
        if (!ROOT_SCHEMA.equals(doc.opt("schema"))) throw new MobexVerifier.Rejected("unknown root schema");
        if (!MobexVerifier.names(doc).equals(new HashSet<>(Arrays.asList("schema", "version", "expires", "keys", "roles")))) {
            throw new MobexVerifier.Rejected("root has unexpected or missing fields");
        }
        long version = MobexVerifier.integer(doc, "version");
        if (version < 1 || version > MAX_ROOT_VERSION) throw new MobexVerifier.Rejected("bad root version");
        Long expires = doc.isNull("expires") ? null : MobexVerifier.time(MobexVerifier.str(doc, "expires"));
        Map<String, PublicKey> keys = new HashMap<>();
        JSONObject keyDocs = MobexVerifier.obj(doc, "keys");
        for (String kid : MobexVerifier.names(keyDocs)) {
            JSONObject entry = MobexVerifier.obj(keyDocs, kid);
            if (!"ecdsa-p256-sha256".equals(entry.opt("keytype"))) throw new MobexVerifier.Rejected("bad key type");
            String pem = MobexVerifier.str(entry, "pem");
            if (!MobexVerifier.keyId(pem).equals(kid)) throw new MobexVerifier.Rejected("key id does not match its PEM");
            keys.put(kid, p256(pem));
        }
        JSONObject roleDocs = MobexVerifier.obj(doc, "roles");
        if (!MobexVerifier.names(roleDocs).equals(new HashSet<>(ROLES))) throw new MobexVerifier.Rejected("roles must be root, release, channel");
        Map<String, List<String>> roles = new HashMap<>();
        Map<String, Integer> thresholds = new HashMap<>();
        for (String name : ROLES) {
            JSONObject role = MobexVerifier.obj(roleDocs, name);
            JSONArray ids = MobexVerifier.arr(role, "keyids");
            List<String> list = new ArrayList<>();
            for (int i = 0; i < ids.length(); i++) {
                Object id = ids.opt(i);
                if (!(id instanceof String) || !keys.containsKey(id) || list.contains(id)) {
                    throw new MobexVerifier.Rejected("role " + name + " names an unknown or repeated key");
                }
                list.add((String) id);
            }
            long threshold = MobexVerifier.integer(role, "threshold");
            if (list.isEmpty() || threshold < 1 || threshold > list.size()) {
                throw new MobexVerifier.Rejected("role " + name + " threshold out of range");
            }
            roles.put(name, list);
            thresholds.put(name, (int) threshold);
        }
        return new Root(version, expires, keys, roles, thresholds);
    }

    static PublicKey p256(String pem) throws MobexVerifier.Rejected {
        PublicKey key = MobexVerifier.loadPublicKey(pem);
        if (!(key instanceof ECPublicKey) || ((ECPublicKey) key).getParams().getCurve().getField().getFieldSize() != 256) {
            throw new MobexVerifier.Rejected("keys must be ECDSA P-256");
        }
        return key;
    }
}
