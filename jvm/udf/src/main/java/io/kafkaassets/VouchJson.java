package io.kafkaassets;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.math.BigDecimal;
import java.math.RoundingMode;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.RowFactory;
import org.apache.spark.sql.api.java.UDF2;

/**
 * The parse's fast path: one streaming pass over a message that vouches for it when it fits the
 * declared fields exactly, and returns their values.
 *
 * <p>It answers null ("not vouched for") at the first thing it is not sure of: bytes that are not
 * well-formed UTF-8, invalid or trailing JSON, a duplicated or undeclared key, a value of another JSON type, a number that
 * needs rounding beyond its declared scale or does not fit, a missing or null nested leaf. Such
 * a message then goes through the field-by-field checks in Spark, which decide and name the
 * error. So it only ever accepts what those checks accept, with the same values: timestamps and
 * dates come back as text for Spark to parse the same way, decimals are rounded half-up as
 * Spark's cast does.
 *
 * <p>The second argument is the declared fields as JSON, {@code [[name, type, required], ...]},
 * with type {@code {"kind": ..., "precision", "scale", "element", "fields"}}.
 */
public final class VouchJson implements UDF2<byte[], String, Row> {
  private static final long serialVersionUID = 1L;
  private static final JsonFactory FACTORY = new JsonFactory();
  private static final Map<String, Type> FORMATS = new ConcurrentHashMap<>();

  /**
   * The format this thread read last, with its text. Spark hands the function a new copy of the
   * format's text for every record, whose hash a map lookup would compute each time (7% of the
   * parse); comparing it with the last one is a vectorized memory compare.
   */
  private static final ThreadLocal<Object[]> LAST = new ThreadLocal<>();

  /** Thrown, never escaping, when a value is not one the fast path vouches for. */
  private static final class NotVouched extends Exception {
    private static final long serialVersionUID = 1L;
    static final NotVouched INSTANCE = new NotVouched();

    private NotVouched() {
      super(null, null, false, false);
    }
  }

  private static final class Type {
    final String kind;
    final int precision;
    final int scale;
    final Type element;
    final Field[] fields;
    final Map<String, Integer> index;

    Type(JsonNode node) {
      kind = node.get("kind").asText();
      precision = node.path("precision").asInt(0);
      scale = node.path("scale").asInt(0);
      element = node.has("element") ? new Type(node.get("element")) : null;
      fields = node.has("fields") ? fieldsOf(node.get("fields")) : new Field[0];
      index = indexOf(fields);
    }

    /** The message itself: an object of the declared top-level fields. */
    Type(Field[] topLevel) {
      kind = "struct";
      precision = 0;
      scale = 0;
      element = null;
      fields = topLevel;
      index = indexOf(topLevel);
    }
  }

  private static final class Field {
    final String name;
    final Type type;
    final boolean required;

    Field(JsonNode node) {
      name = node.get(0).asText();
      type = new Type(node.get(1));
      required = node.size() > 2 && node.get(2).asBoolean();
    }
  }

  private static Field[] fieldsOf(JsonNode list) {
    Field[] out = new Field[list.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = new Field(list.get(i));
    }
    return out;
  }

  private static Map<String, Integer> indexOf(Field[] fields) {
    Map<String, Integer> index = new HashMap<>();
    for (int i = 0; i < fields.length; i++) {
      index.put(fields[i].name, i);
    }
    return index;
  }

  private static Type format(String spec) {
    try {
      return new Type(fieldsOf(new ObjectMapper().readTree(spec)));
    } catch (Exception e) {
      throw new IllegalArgumentException("kafka-assets: unreadable format for VouchJson: " + spec, e);
    }
  }

  private static Type formatOf(String spec) {
    Object[] last = LAST.get();
    if (last != null && spec.equals(last[0])) {
      return (Type) last[1];
    }
    Type type = FORMATS.computeIfAbsent(spec, VouchJson::format);
    LAST.set(new Object[] {spec, type});
    return type;
  }

  @Override
  public Row call(byte[] value, String spec) throws Exception {
    // The first byte must open the object or be JSON whitespace: Jackson would otherwise skip a
    // byte-order mark or read UTF-16, which the checks (reading UTF-8 text) refuse.
    if (value == null || value.length == 0 || !opens(value[0]) || !validUtf8(value)) {
      return null;
    }
    Type message = formatOf(spec);
    try (JsonParser parser = FACTORY.createParser(value)) {
      if (parser.nextToken() != JsonToken.START_OBJECT) {
        return null;
      }
      Object[] row = object(parser, message.fields, message.index, false);
      if (parser.nextToken() != null) {
        return null; // something after the document
      }
      return RowFactory.create(row);
    } catch (NotVouched e) {
      return null;
    } catch (java.io.IOException e) {
      return null; // not JSON, or not UTF-8: the checks name it
    }
  }

  /**
   * Well-formed UTF-8, as Spark's {@code is_valid_utf8} decides (no overlong forms, surrogates or
   * code points past U+10FFFF): the checks reject anything else, so the fast path must too.
   * Messages are mostly ASCII, tested eight bytes at a time; only the others are decoded.
   */
  static boolean validUtf8(byte[] value) {
    int i = 0;
    for (; i + 8 <= value.length; i += 8) {
      if (((long) LONGS.get(value, i) & 0x8080808080808080L) != 0) {
        break;
      }
    }
    for (; i < value.length; i++) {
      if (value[i] < 0) {
        try {
          StandardCharsets.UTF_8
              .newDecoder()
              .decode(ByteBuffer.wrap(value, i, value.length - i));
          return true;
        } catch (CharacterCodingException e) {
          return false;
        }
      }
    }
    return true;
  }

  private static final VarHandle LONGS =
      MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);

  private static boolean opens(byte first) {
    return first == '{' || first == ' ' || first == '\t' || first == '\n' || first == '\r';
  }

  /** An object's declared fields, in declared order; `nested` leaves must all be present. */
  private static Object[] object(
      JsonParser parser, Field[] fields, Map<String, Integer> index, boolean nested)
      throws java.io.IOException, NotVouched {
    Object[] values = new Object[fields.length];
    boolean[] seen = new boolean[fields.length];
    JsonToken token;
    while ((token = parser.nextToken()) == JsonToken.FIELD_NAME) {
      Integer at = index.get(parser.currentName());
      if (at == null || seen[at]) {
        throw NotVouched.INSTANCE; // undeclared or duplicated
      }
      parser.nextToken();
      seen[at] = true;
      values[at] = parser.currentToken() == JsonToken.VALUE_NULL ? null : value(parser, fields[at].type);
    }
    if (token != JsonToken.END_OBJECT) {
      throw NotVouched.INSTANCE;
    }
    for (int i = 0; i < fields.length; i++) {
      if (values[i] == null && (nested || fields[i].required)) {
        throw NotVouched.INSTANCE;
      }
    }
    return values;
  }

  private static Object value(JsonParser parser, Type type)
      throws java.io.IOException, NotVouched {
    JsonToken token = parser.currentToken();
    switch (type.kind) {
      case "string":
      case "timestamp":
      case "date":
        if (token != JsonToken.VALUE_STRING) {
          throw NotVouched.INSTANCE;
        }
        return parser.getText();
      case "boolean":
        if (token == JsonToken.VALUE_TRUE) {
          return Boolean.TRUE;
        }
        if (token == JsonToken.VALUE_FALSE) {
          return Boolean.FALSE;
        }
        throw NotVouched.INSTANCE;
      case "int":
        if (token != JsonToken.VALUE_NUMBER_INT
            || parser.getNumberType() != JsonParser.NumberType.INT) {
          throw NotVouched.INSTANCE;
        }
        return parser.getIntValue();
      case "long":
        if (token != JsonToken.VALUE_NUMBER_INT
            || parser.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
          throw NotVouched.INSTANCE;
        }
        return parser.getLongValue();
      case "double":
        if (token == JsonToken.VALUE_NUMBER_INT
            && parser.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
          throw NotVouched.INSTANCE;
        }
        if (token != JsonToken.VALUE_NUMBER_INT && token != JsonToken.VALUE_NUMBER_FLOAT) {
          throw NotVouched.INSTANCE;
        }
        double d = parser.getDoubleValue();
        if (Double.isNaN(d) || Double.isInfinite(d)) {
          throw NotVouched.INSTANCE;
        }
        return d;
      case "decimal":
        return decimal(parser, token, type);
      case "array":
        if (token != JsonToken.START_ARRAY) {
          throw NotVouched.INSTANCE;
        }
        List<Object> items = new ArrayList<>();
        while (parser.nextToken() != JsonToken.END_ARRAY) {
          if (parser.currentToken() == JsonToken.VALUE_NULL) {
            throw NotVouched.INSTANCE; // a null element is a missing leaf to the checks
          }
          items.add(value(parser, type.element));
        }
        return items;
      case "struct":
        if (token != JsonToken.START_OBJECT) {
          throw NotVouched.INSTANCE;
        }
        return RowFactory.create(object(parser, type.fields, type.index, true));
      default:
        throw NotVouched.INSTANCE; // json and anything new: the checks decide
    }
  }

  /**
   * A JSON number the variant parser keeps exact (no exponent, at most 38 digits), rounded
   * half-up to the declared scale, as Spark's cast does; one that no longer fits is not vouched.
   */
  private static BigDecimal decimal(JsonParser parser, JsonToken token, Type type)
      throws java.io.IOException, NotVouched {
    if (token != JsonToken.VALUE_NUMBER_INT && token != JsonToken.VALUE_NUMBER_FLOAT) {
      throw NotVouched.INSTANCE;
    }
    String text = parser.getText();
    if (text.indexOf('e') >= 0 || text.indexOf('E') >= 0) {
      throw NotVouched.INSTANCE;
    }
    BigDecimal exact = new BigDecimal(text);
    if (exact.precision() > 38) {
      throw NotVouched.INSTANCE;
    }
    BigDecimal rounded = exact.setScale(type.scale, RoundingMode.HALF_UP);
    if (rounded.precision() - rounded.scale() > type.precision - type.scale) {
      throw NotVouched.INSTANCE;
    }
    return rounded;
  }
}
