#!/usr/bin/env python3
"""Generate the tokenizer parity corpus: tests/data/tokenizer/corpus.jsonl.

Deterministic (fixed seed, Python standard library only, no network, no
reading of files that change over time): running it again produces a
byte-identical file. Every document is synthesised from the small word lists
and templates in this file; nothing is downloaded or copied.

Output: one JSON object per line, {"id": "<category>-<n>", "text": "..."},
written with ensure_ascii=False (raw UTF-8) and "\n" line terminators. JSON
escapes every control character (so a raw CR never appears in the file),
which means the file can safely be split on "\n" only. Do NOT split it with
str.splitlines(): texts contain U+2028/U+2029/U+0085 verbatim.

Each document is between 1 KiB and 20 KiB of UTF-8; the total is asserted to
be at least 1.1 MB.

Usage (from the repository root):
    python3 scripts/tokenizer-parity/make_corpus.py
    python3 scripts/tokenizer-parity/make_corpus.py --out /tmp/corpus.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import string
import sys
import unicodedata

SEED = 20240611
MIN_DOC = 1024
MAX_DOC = 20 * 1024
MIN_TOTAL = 1_100_000

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "tokenizer", "corpus.jsonl")


def utf8_len(s: str) -> int:
    return len(s.encode("utf-8"))


def fill(rng: random.Random, piece, target: int, sep: str = "") -> str:
    """Concatenate pieces produced by piece(rng) until `target` UTF-8 bytes."""
    parts = []
    size = 0
    while size < target:
        p = piece(rng)
        parts.append(p)
        size += utf8_len(p) + utf8_len(sep)
    return sep.join(parts)


def clamp(text: str) -> str:
    """Cut a document to at most MAX_DOC bytes on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= MAX_DOC:
        return text
    return data[:MAX_DOC].decode("utf-8", errors="ignore")


# ---------------------------------------------------------------------------
# Prose in several languages: word lists + sentence templates.
# Each language: (nouns, verbs, adjectives, function words, templates, end punct)
# Templates use {N} noun, {V} verb, {A} adjective, {F} function word,
# {X} a number, {Q} a proper name.
# ---------------------------------------------------------------------------

LANGS = {
    "en": dict(
        N="house city river teacher window garden morning problem answer market station letter question mountain dog library engine bridge village computer story friend winter council harbour kitchen".split(),
        V="finds builds remembers carries opens explains watches follows describes closes paints repairs forgets discovers measures borrows".split(),
        A="old quiet bright narrow heavy gentle strange early broken warm careful empty golden simple distant crowded".split(),
        F="the a of and with without under because although while near every".split(),
        Q="Alice Marcus Priya O'Neill Zhang McDonald Jean-Luc Ellington".split(),
        T=[
            "The {A} {N} {V} a {A} {N}.",
            "Every {N} {V} the {N} near the {A} {N}, {F} nobody notices.",
            "{Q} said that the {N} {V} {X} {N}s before noon.",
            "Why does the {A} {N} never {V} the {N}?",
            "In {X}, {Q} wrote a letter about the {A} {N} and its {N}.",
            "\u201cThe {N} is {A},\u201d said {Q}; \u201cit {V} the {N}.\u201d",
        ],
        P=[". ", "! ", "? ", "; "],
    ),
    "fr": dict(
        N="maison ville rivière professeur fenêtre jardin matin problème réponse marché gare lettre question montagne chien bibliothèque pont village ordinateur histoire ami hiver cœur œuvre".split(),
        V="trouve construit rappelle porte ouvre explique regarde suit décrit ferme peint répare oublie découvre".split(),
        A="vieux calme lumineux étroit lourd doux étrange précoce cassé chaud prudent vide doré simple lointain".split(),
        F="le la les un une des du de et avec sans sous parce que pendant près chaque où".split(),
        Q="Élodie François Hélène Jérôme Loïc Noémie Zoé".split(),
        T=[
            "Le {N} {A} {V} une {N} {A}.",
            "Chaque {N} {V} le {N} près du {N} {A}, parce que personne ne le voit.",
            "{Q} a dit que le {N} {V} {X} fois avant midi.",
            "Pourquoi le {N} {A} ne {V}-il jamais le {N} ?",
            "« C'est l'{N} qu'il {V} », répond {Q} ; « l'{N} d'aujourd'hui est {A} ».",
            "En {X}, {Q} s'est souvenu de l'{N} où l'on {V} l'{N}.",
        ],
        P=[". ", " ! ", " ? ", " ; "],
    ),
    "de": dict(
        N="Haus Stadt Fluss Lehrer Fenster Garten Morgen Problem Antwort Markt Bahnhof Brief Frage Berg Hund Bibliothek Brücke Dorf Rechner Geschichte Freund Straße Größe Übung Schlüssel Donaudampfschifffahrtsgesellschaft".split(),
        V="findet baut erinnert trägt öffnet erklärt beobachtet folgt beschreibt schließt malt repariert vergisst entdeckt".split(),
        A="alte ruhige helle schmale schwere sanfte seltsame frühe kaputte warme vorsichtige leere goldene einfache ferne".split(),
        F="der die das ein eine und mit ohne unter weil obwohl während bei jeder für über".split(),
        Q="Jürgen Käthe Müller Schröder Björn Özdemir Weiß".split(),
        T=[
            "Der {A} {N} {V} eine {A} {N}.",
            "Jeder {N} {V} den {N} bei der {A} {N}, obwohl niemand es bemerkt.",
            "{Q} sagte, dass das {N} {X}-mal vor Mittag {V}.",
            "Warum {V} die {A} {N} nie den {N}?",
            "„Das {N} ist {A}“, sagte {Q}, „und es {V} die {N}.“",
            "Im Jahr {X} schrieb {Q} über die {N} und das {A} {N}.",
        ],
        P=[". ", "! ", "? ", "; "],
    ),
    "es": dict(
        N="casa ciudad río maestro ventana jardín mañana problema respuesta mercado estación carta pregunta montaña perro biblioteca puente pueblo ordenador historia amigo invierno niño corazón".split(),
        V="encuentra construye recuerda lleva abre explica mira sigue describe cierra pinta repara olvida descubre".split(),
        A="viejo tranquilo brillante estrecho pesado suave extraño temprano roto cálido cuidadoso vacío dorado sencillo lejano".split(),
        F="el la los las un una de del y con sin bajo porque aunque mientras cerca cada".split(),
        Q="Andrés Begoña José María Núñez Íñigo Sofía".split(),
        T=[
            "El {N} {A} {V} una {N} {A}.",
            "Cada {N} {V} el {N} cerca del {N} {A}, aunque nadie lo nota.",
            "{Q} dijo que el {N} {V} {X} veces antes del mediodía.",
            "¿Por qué el {N} {A} nunca {V} el {N}?",
            "¡Qué {A} es el {N}! —exclamó {Q}—. ¡Nadie {V} la {N}!",
            "En {X}, {Q} escribió sobre el {N} y su {N} {A}.",
        ],
        P=[". ", ". ", "; "],
    ),
    "pt": dict(
        N="casa cidade rio professor janela jardim manhã problema resposta mercado estação carta pergunta montanha cão biblioteca ponte aldeia computador história amigo inverno coração ação".split(),
        V="encontra constrói lembra leva abre explica observa segue descreve fecha pinta conserta esquece descobre".split(),
        A="velho tranquilo brilhante estreito pesado suave estranho cedo quebrado quente cuidadoso vazio dourado simples distante".split(),
        F="o a os as um uma de do da e com sem sob porque embora enquanto perto cada não".split(),
        Q="João Conceição Gonçalves Inês Antônio Lúcia".split(),
        T=[
            "O {N} {A} {V} uma {N} {A}.",
            "Cada {N} {V} o {N} perto do {N} {A}, embora ninguém perceba.",
            "{Q} disse que o {N} {V} {X} vezes antes do meio-dia.",
            "Por que o {N} {A} nunca {V} o {N}?",
            "Em {X}, {Q} escreveu sobre a {N} e o seu {N} {A}.",
        ],
        P=[". ", "! ", "? ", "; "],
    ),
    "ru": dict(
        N="дом город река учитель окно сад утро проблема ответ рынок вокзал письмо вопрос гора собака библиотека мост деревня компьютер история друг зима ёжик".split(),
        V="находит строит помнит несёт открывает объясняет смотрит следует описывает закрывает рисует чинит забывает".split(),
        A="старый тихий яркий узкий тяжёлый мягкий странный ранний сломанный тёплый осторожный пустой золотой простой далёкий".split(),
        F="и в на с без под потому что хотя пока около каждый".split(),
        Q="Анна Пётр Иванов Ольга Сергеевна Юрий Щукин".split(),
        T=[
            "{A} {N} {V} {A} {N}.",
            "Каждый {N} {V} {N} около {A} {N}, хотя никто не замечает.",
            "{Q} сказал, что {N} {V} {X} раз до полудня.",
            "Почему {A} {N} никогда не {V} {N}?",
            "«{N} — это {A} {N}», — ответила {Q}.",
            "В {X} году {Q} ПИСАЛ о том, как {N} {V} {N}.",
        ],
        P=[". ", "! ", "? ", "; "],
    ),
    "ar": dict(
        N="بيت مدينة نهر معلم نافذة حديقة صباح مشكلة جواب سوق محطة رسالة سؤال جبل كلب مكتبة جسر قرية حاسوب قصة صديق شتاء".split(),
        V="يجد يبني يتذكر يحمل يفتح يشرح يراقب يتبع يصف يغلق يرسم يصلح ينسى يكتشف".split(),
        A="قديم هادئ مشرق ضيق ثقيل لطيف غريب مبكر مكسور دافئ حذر فارغ ذهبي بسيط بعيد".split(),
        F="في على مع بدون تحت لأن بينما قرب كل و".split(),
        Q="محمد فاطمة عليّ يوسف مريم".split(),
        T=[
            "ال{N} ال{A} {V} {N}اً {A}اً.",
            "كل {N} {V} ال{N} قرب ال{N} ال{A}، لكن لا أحد يلاحظ.",
            "قال {Q} إن ال{N} {V} {X} مرات قبل الظهر.",
            "لماذا لا {V} ال{N} ال{A} ال{N}؟",
            "في عام {X}، كتب {Q} عن ال{N} وَال{N} ال{A}.",
        ],
        P=[". ", "! ", "؟ ", "؛ "],
    ),
    "hi": dict(
        N="घर शहर नदी शिक्षक खिड़की बगीचा सुबह समस्या उत्तर बाज़ार स्टेशन पत्र प्रश्न पहाड़ कुत्ता पुस्तकालय पुल गाँव कंप्यूटर कहानी दोस्त सर्दी".split(),
        V="पाता बनाता याद करता ले जाता खोलता समझाता देखता अनुसरण करता लिखता बंद करता".split(),
        A="पुराना शांत चमकीला संकरा भारी कोमल अजीब जल्दी टूटा गरम सावधान खाली सुनहरा सरल दूर".split(),
        F="और के की का में पर से बिना नीचे क्योंकि जबकि हर".split(),
        Q="राम सीता अर्जुन प्रिया कृष्ण".split(),
        T=[
            "{A} {N} एक {A} {N} {V} है।",
            "हर {N} {A} {N} के पास {N} {V} है, क्योंकि कोई नहीं देखता।",
            "{Q} ने कहा कि {N} दोपहर से पहले {X} बार {V} है।",
            "{A} {N} कभी {N} क्यों नहीं {V}?",
            "सन् {X} में {Q} ने {N} के बारे में लिखा।",
        ],
        P=["। ", "! ", "? ", "॥ "],
    ),
    "tr": dict(
        N="ev şehir nehir öğretmen pencere bahçe sabah sorun cevap pazar istasyon mektup soru dağ köpek kütüphane köprü köy bilgisayar hikâye arkadaş kış ılık".split(),
        V="buluyor inşa ediyor hatırlıyor taşıyor açıyor açıklıyor izliyor takip ediyor anlatıyor kapatıyor boyuyor onarıyor unutuyor".split(),
        A="eski sessiz parlak dar ağır yumuşak garip erken kırık sıcak dikkatli boş altın basit uzak".split(),
        F="ve ile için ama çünkü her bu şu gibi daha".split(),
        Q="İstanbul Ayşe Çağrı Gülşen Özgür Şükrü İLKER IŞIK".split(),
        T=[
            "{A} {N} {A} bir {N} {V}.",
            "Her {N} {A} {N} yanında {N} {V}, çünkü kimse fark etmiyor.",
            "{Q}, {N} öğleden önce {X} kez {V} dedi.",
            "{A} {N} neden hiç {N} {V}?",
            "{X} yılında {Q} {N} hakkında yazdı; İĞNE, ĞÜŞİÖÇ, ığüşiöç.",
        ],
        P=[". ", "! ", "? ", "; "],
    ),
    "vi": dict(
        N="nhà thành phố sông giáo viên cửa sổ khu vườn buổi sáng vấn đề câu trả lời chợ nhà ga lá thư câu hỏi núi con chó thư viện cây cầu làng máy tính câu chuyện người bạn mùa đông".split(),
        V="tìm thấy xây dựng nhớ mang mở giải thích quan sát theo dõi mô tả đóng vẽ sửa chữa quên khám phá".split(),
        A="cũ yên tĩnh sáng hẹp nặng nhẹ nhàng lạ sớm hỏng ấm cẩn thận trống vàng đơn giản xa xôi".split(),
        F="và với không có dưới vì mặc dù trong khi gần mỗi của".split(),
        Q="Nguyễn Trần Lê Phạm Hoàng Đặng Ngô".split(),
        T=[
            "{N} {A} {V} một {N} {A}.",
            "Mỗi {N} {V} {N} gần {N} {A}, mặc dù không ai để ý.",
            "{Q} nói rằng {N} {V} {X} lần trước buổi trưa.",
            "Tại sao {N} {A} không bao giờ {V} {N}?",
            "Năm {X}, {Q} đã viết về {N} và {N} {A}.",
        ],
        P=[". ", "! ", "? ", "; "],
    ),
    "el": dict(
        N="σπίτι πόλη ποτάμι δάσκαλος παράθυρο κήπος πρωί πρόβλημα απάντηση αγορά σταθμός γράμμα ερώτηση βουνό σκύλος βιβλιοθήκη γέφυρα χωριό".split(),
        V="βρίσκει χτίζει θυμάται κουβαλά ανοίγει εξηγεί παρακολουθεί ακολουθεί περιγράφει κλείνει".split(),
        A="παλιός ήσυχος φωτεινός στενός βαρύς απαλός παράξενος νωρίς σπασμένος ζεστός".split(),
        F="και με χωρίς κάτω επειδή ενώ κοντά κάθε ο η το".split(),
        Q="Σωκράτης Ελένη Νίκος ΑΘΗΝΑ Ὀδυσσεύς".split(),
        T=[
            "Ο {A} {N} {V} έναν {A} {N}.",
            "Κάθε {N} {V} το {N} κοντά στο {A} {N}, ενώ κανείς δεν το βλέπει.",
            "Ο {Q} είπε ότι το {N} {V} {X} φορές πριν το μεσημέρι.",
            "Γιατί ο {A} {N} δεν {V} ποτέ το {N};",
        ],
        P=[". ", "! ", "; ", "· "],
    ),
    "he": dict(
        N="בית עיר נהר מורה חלון גן בוקר בעיה תשובה שוק תחנה מכתב שאלה הר כלב ספרייה גשר כפר".split(),
        V="מוצא בונה זוכר נושא פותח מסביר צופה עוקב מתאר סוגר".split(),
        A="ישן שקט בהיר צר כבד עדין מוזר מוקדם שבור חם".split(),
        F="ו עם בלי מתחת כי בזמן ליד כל של".split(),
        Q="דוד שרה יוסף מרים".split(),
        T=[
            "ה{N} ה{A} {V} {N} {A}.",
            "כל {N} {V} את ה{N} ליד ה{N} ה{A}, אבל אף אחד לא רואה.",
            "{Q} אמר שה{N} {V} {X} פעמים לפני הצהריים.",
            "לָמָּה ה{N} לא {V} את ה{N}?",
        ],
        P=[". ", "! ", "? ", "; "],
    ),
}


def prose_sentence(rng: random.Random, lang: str) -> str:
    L = LANGS[lang]
    tmpl = rng.choice(L["T"])
    out = []
    i = 0
    while i < len(tmpl):
        c = tmpl[i]
        if c == "{" and i + 2 < len(tmpl) and tmpl[i + 2] == "}":
            key = tmpl[i + 1]
            if key == "X":
                out.append(str(rng.choice([rng.randint(0, 99), rng.randint(1000, 2030), rng.randint(100, 99999)])))
            else:
                out.append(rng.choice(L[key]))
            i += 3
            continue
        out.append(c)
        i += 1
    s = "".join(out)
    s = s[:1].upper() + s[1:]
    if rng.random() < 0.03:
        s = s.upper()
    return s


def gen_prose(rng: random.Random, lang: str, target: int) -> str:
    paras = []
    size = 0
    while size < target:
        n = rng.randint(2, 7)
        para = " ".join(prose_sentence(rng, lang) for _ in range(n))
        paras.append(para)
        size += utf8_len(para) + 2
    text = "\n\n".join(paras)
    if lang == "vi" and rng.random() < 0.5:
        # decomposed (NFD) Vietnamese: base letters + combining marks
        text = unicodedata.normalize("NFD", text)
    return text + rng.choice(["", "\n", " ", "\n\n"])


# ---------------------------------------------------------------------------
# CJK
# ---------------------------------------------------------------------------

ZH_WORDS = "我们 你们 他们 今天 明天 昨天 北京 上海 学校 老师 学生 朋友 电脑 手机 问题 答案 世界 中国 时间 工作 生活 城市 河流 山 水 火 风 雨 书 字 说 看 听 写 想 做 吃 喝 走 跑 是 的 了 在 有 和 不 很 也 都 就 但是 因为 所以 如果 虽然 已经 正在 可以 应该 非常 一些 这个 那个 什么 为什么 怎么 多少 龍 體 國 書 學 愛 鬱 𠮷 𩸽".split()
ZH_PUNCT = ["，", "。", "！", "？", "；", "：", "、", "「", "」", "《", "》", "（", "）", "……", "——"]

JA_WORDS = "わたし あなた きょう あした がっこう せんせい ともだち でんしゃ ごはん ありがとう こんにちは すみません カタカナ コンピューター インターネット プログラム データ サーバー トークン コーヒー ラーメン テスト 日本 東京 大阪 京都 学生 先生 会社 時間 仕事 電話 天気 雨 山 川 花 桜 富士山 新幹線 漢字 平仮名 片仮名 ｶﾀｶﾅ ﾃｽﾄ ｱｲｳｴｵ ゛ ゜ ヴ ゔ ー 々".split()
JA_PARTICLES = ["は", "が", "を", "に", "で", "と", "の", "も", "へ", "から", "まで", "です", "ます", "でした", "ません", "ました"]
JA_PUNCT = ["、", "。", "！", "？", "「", "」", "『", "』", "・", "〜", "…"]

KO_WORDS = "나 너 우리 오늘 내일 어제 학교 선생님 학생 친구 컴퓨터 전화 문제 대답 세계 한국 서울 부산 시간 일 생활 도시 강 산 물 불 바람 비 책 글자 말하다 보다 듣다 쓰다 생각하다 하다 먹다 마시다 가다 달리다 입니다 있습니다 없습니다 그리고 하지만 왜냐하면 그래서 만약 아주 조금 이것 그것 무엇 왜 어떻게 얼마나 똠방각하 힣 갂".split()
KO_PARTICLES = ["은", "는", "이", "가", "을", "를", "에", "에서", "와", "과", "의", "도", "로"]


def gen_zh(rng: random.Random, target: int) -> str:
    def sent(r: random.Random) -> str:
        words = [r.choice(ZH_WORDS) for _ in range(r.randint(4, 16))]
        if r.random() < 0.2:
            words.insert(r.randrange(len(words)), str(r.randint(1, 2030)))
        if r.random() < 0.1:
            words.insert(r.randrange(len(words)), r.choice(["GPT", "AI", "Python", "OK", "iPhone"]))
        s = "".join(words)
        if r.random() < 0.3:
            cut = r.randrange(1, len(s))
            s = s[:cut] + r.choice(ZH_PUNCT) + s[cut:]
        return s + r.choice(["。", "！", "？", "。", "……"])
    return fill(rng, lambda r: sent(r) + ("\n" if r.random() < 0.15 else ""), target)


def gen_ja(rng: random.Random, target: int) -> str:
    def sent(r: random.Random) -> str:
        parts = []
        for _ in range(r.randint(3, 9)):
            parts.append(r.choice(JA_WORDS))
            parts.append(r.choice(JA_PARTICLES))
            if r.random() < 0.15:
                parts.append(r.choice(JA_PUNCT))
        if r.random() < 0.1:
            parts.append(str(r.randint(1, 9999)) + r.choice(["円", "年", "月", "日", "人", "個"]))
        return "".join(parts) + r.choice(["。", "！", "？", "。"])
    return fill(rng, lambda r: sent(r) + ("\n" if r.random() < 0.2 else ""), target)


def gen_ko(rng: random.Random, target: int) -> str:
    def sent(r: random.Random) -> str:
        parts = []
        for _ in range(r.randint(3, 10)):
            w = r.choice(KO_WORDS)
            if r.random() < 0.6:
                w += r.choice(KO_PARTICLES)
            parts.append(w)
        s = " ".join(parts) + r.choice([".", "!", "?", ".", "요."])
        if r.random() < 0.1:
            # conjoining jamo (decomposed hangul)
            s += " " + unicodedata.normalize("NFD", r.choice(["한국어", "감사합니다", "안녕하세요"]))
        return s
    return fill(rng, lambda r: sent(r) + ("\n" if r.random() < 0.2 else " "), target)


# ---------------------------------------------------------------------------
# Source code (templated)
# ---------------------------------------------------------------------------

IDENT_PARTS = "user request response token count buffer stream config cache handler client server route model body header retry limit window budget parse encode decode upstream latency index item value key path error state".split()


def ident(rng: random.Random, style: str = "snake") -> str:
    parts = [rng.choice(IDENT_PARTS) for _ in range(rng.randint(1, 3))]
    if style == "snake":
        return "_".join(parts)
    if style == "camel":
        return parts[0] + "".join(p.capitalize() for p in parts[1:])
    if style == "pascal":
        return "".join(p.capitalize() for p in parts)
    if style == "upper":
        return "_".join(parts).upper()
    return "-".join(parts)


RUST_TYPES = ["u32", "u64", "usize", "String", "Vec<u8>", "Option<Box<str>>", "HashMap<String, Vec<u32>>", "&'a str", "Arc<Mutex<()>>"]
PY_LITERALS = ['"hello"', '""', '"caf\u00e9"', '"\\n\\t"', 'r"\\d+"', '"\U0001f600"']
SQL_LIKE = ["o''brien", "caf\u00e9", "\u00fc", "_x", "50\\%"]


def gen_rust(rng: random.Random, target: int) -> str:
    def item(r: random.Random) -> str:
        k = r.randrange(6)
        name = ident(r)
        ty = ident(r, "pascal")
        if k == 0:
            fields = "\n".join(
                f"    /// The {ident(r).replace('_', ' ')}.\n    pub {ident(r)}: {r.choice(RUST_TYPES)},"
                for _ in range(r.randint(2, 6))
            )
            return f"#[derive(Debug, Clone, PartialEq)]\npub struct {ty}<'a> {{\n{fields}\n}}\n"
        if k == 1:
            return (
                f"pub fn {name}(input: &str, limit: usize) -> Result<Vec<u32>, {ty}Error> {{\n"
                f"    let mut out = Vec::with_capacity(limit.min({r.randint(16, 4096)}));\n"
                f"    for (i, ch) in input.char_indices() {{\n"
                f"        if ch.is_whitespace() && i % {r.randint(2, 9)} == 0 {{\n"
                f"            continue;\n"
                f"        }}\n"
                f"        out.push(ch as u32 ^ 0x{r.randint(0, 0xFFFF):04x});\n"
                f"    }}\n"
                f"    if out.len() > limit {{\n"
                f"        return Err({ty}Error::TooLong {{ len: out.len(), limit }});\n"
                f"    }}\n"
                f"    Ok(out)\n"
                f"}}\n"
            )
        if k == 2:
            arms = "\n".join(
                f"            {ty}::{ident(r, 'pascal')} => \"{ident(r, 'kebab')}\","
                for _ in range(r.randint(2, 5))
            )
            return (
                f"impl std::fmt::Display for {ty} {{\n"
                f"    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {{\n"
                f"        let s = match self {{\n{arms}\n        }};\n"
                f"        write!(f, \"{{s}}\")\n    }}\n}}\n"
            )
        if k == 3:
            return (
                f"#[cfg(test)]\nmod tests {{\n    use super::*;\n\n    #[test]\n    fn {name}_works() {{\n"
                f"        let v = {name}(\"h\u00e9llo w\u00f6rld \u2014 {r.randint(0, 999)}\", {r.randint(1, 64)});\n"
                f"        assert_eq!(v.map(|x| x.len()).unwrap_or_default(), {r.randint(0, 40)});\n"
                f"        assert!(matches!({ty}::default(), {ty} {{ .. }}));\n    }}\n}}\n"
            )
        if k == 4:
            return (
                f"// {ident(r).replace('_', ' ')}: see RFC {r.randint(1000, 9999)} \u00a7{r.randint(1, 9)}.{r.randint(1, 9)}\n"
                f"const {ident(r, 'upper')}: &[u8; {r.randint(2, 8)}] = b\"\\x{r.randint(0, 255):02x}\\n\\t\";\n"
                f"static {ident(r, 'upper')}: [i64; 3] = [{r.randint(-10**9, 10**9)}, 0x{r.randint(0, 2**32):X}, 1_000_{r.randint(100, 999)}];\n"
            )
        return (
            f"async fn {name}<T: Into<String> + Send>(client: &Client, v: T) -> anyhow::Result<()> {{\n"
            f"    let body = serde_json::json!({{ \"{ident(r)}\": v.into(), \"n\": {r.randint(0, 100)} }});\n"
            f"    let resp = client.post(\"http://127.0.0.1:{r.randint(1024, 65535)}/v1/{ident(r, 'kebab')}\").json(&body).send().await?;\n"
            f"    tracing::debug!(status = %resp.status(), \"{ident(r).replace('_', ' ')}\");\n"
            f"    Ok(())\n}}\n"
        )
    head = "use std::collections::HashMap;\nuse std::sync::{Arc, Mutex};\n\n"
    return head + fill(rng, item, target, "\n")


def gen_python(rng: random.Random, target: int) -> str:
    def item(r: random.Random) -> str:
        k = r.randrange(5)
        name = ident(r)
        cls = ident(r, "pascal")
        if k == 0:
            return (
                f"def {name}(items: list[str], *, limit: int = {r.randint(1, 500)}) -> dict[str, int]:\n"
                f"    \"\"\"Count {ident(r).replace('_', ' ')} \u2014 returns a mapping.\"\"\"\n"
                f"    counts: dict[str, int] = {{}}\n"
                f"    for i, item in enumerate(items):\n"
                f"        if i >= limit:\n"
                f"            break\n"
                f"        counts[item] = counts.get(item, 0) + {r.randint(1, 3)}\n"
                f"    return counts\n"
            )
        if k == 1:
            return (
                f"class {cls}({r.choice(['object', 'Exception', 'dict', 'BaseModel'])}):\n"
                f"    {ident(r)}: int = {r.randint(0, 10**6)}\n\n"
                f"    def __init__(self, value, *args, **kwargs):\n"
                f"        super().__init__(*args, **kwargs)\n"
                f"        self._value = value  # type: ignore[attr-defined]\n\n"
                f"    def __repr__(self) -> str:\n"
                f"        return f\"{cls}(value={{self._value!r}}, n={{len(self)!s:>{r.randint(2, 9)}}})\"\n"
            )
        if k == 2:
            return (
                f"@pytest.mark.parametrize(\"text,expected\", [\n"
                + "".join(
                    f"    ({r.choice(PY_LITERALS)}, {r.randint(0, 12)}),\n"
                    for _ in range(r.randint(2, 6))
                )
                + f"])\ndef test_{name}(text, expected):\n    assert len({name}([text])) <= expected\n"
            )
        if k == 3:
            return (
                f"{ident(r, 'upper')} = {{\n"
                + "".join(f"    \"{ident(r, 'kebab')}\": {r.choice([str(r.randint(0, 99)), 'None', 'True', repr(r.random())])},\n" for _ in range(r.randint(2, 6)))
                + "}\n"
            )
        return (
            f"async def {name}(session, url: str) -> bytes:\n"
            f"    async with session.get(url, timeout={r.randint(1, 60)}) as resp:\n"
            f"        if resp.status != {r.choice([200, 201, 204])}:\n"
            f"            raise RuntimeError(f\"bad status {{resp.status}} for {{url!r}}\")\n"
            f"        return await resp.read()\n"
        )
    head = "#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\nfrom __future__ import annotations\n\nimport asyncio\nimport pytest\n\n\n"
    return head + fill(rng, item, target, "\n\n")


def gen_js(rng: random.Random, target: int) -> str:
    def item(r: random.Random) -> str:
        k = r.randrange(4)
        name = ident(r, "camel")
        if k == 0:
            return (
                f"export async function {name}(req, res) {{\n"
                f"\tconst {{ {ident(r, 'camel')}, {ident(r, 'camel')} = {r.randint(0, 9)} }} = req.body ?? {{}};\n"
                f"\tif (!Array.isArray(req.query?.ids)) return res.status({r.choice([400, 404, 422])}).json({{ error: `missing ids: ${{req.url}}` }});\n"
                f"\tconst out = req.query.ids.map((x) => Number.parseInt(x, 10)).filter((n) => n >= 0 && n !== NaN);\n"
                f"\treturn res.json({{ ok: true, out, ts: Date.now() }});\n"
                f"}}\n"
            )
        if k == 1:
            return (
                f"const {name} = ({ident(r, 'camel')}) => {{\n"
                f"  let acc = 0;\n"
                f"  for (let i = 0; i < {ident(r, 'camel')}.length; i++) acc = (acc * 31 + {ident(r, 'camel')}.charCodeAt(i)) >>> 0;\n"
                f"  return acc === 0x{r.randint(0, 2**31):x} ? null : acc;\n"
                f"}};\n"
            )
        if k == 2:
            return (
                f"class {ident(r, 'pascal')} extends EventTarget {{\n"
                f"  #private = new Map();\n"
                f"  static VERSION = '{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 99)}';\n"
                f"  get size() {{ return this.#private.size; }}\n"
                f"  set(k, v) {{ this.#private.set(k, v); this.dispatchEvent(new Event('change')); return this; }}\n"
                f"}}\n"
            )
        return (
            f"// TODO({ident(r)}): {r.choice(['fix this', 'remove me', 'é à ü', '日本語のコメント'])}\n"
            f"document.querySelector('#{ident(r, 'kebab')}')?.addEventListener('click', (e) => {{ e.preventDefault(); console.log(\"clicked\", e.target?.dataset?.id, /^[a-z0-9_\\-]+$/i.test(e.target.id)); }});\n"
        )
    return "'use strict';\n\n" + fill(rng, item, target, "\n")


def gen_sql(rng: random.Random, target: int) -> str:
    def item(r: random.Random) -> str:
        k = r.randrange(4)
        t = ident(r)
        if k == 0:
            cols = ",\n".join(
                f"    {ident(r)} {r.choice(['INTEGER', 'BIGINT NOT NULL', 'TEXT', 'VARCHAR(255)', 'TIMESTAMP WITH TIME ZONE DEFAULT now()', 'NUMERIC(12, 4)', 'JSONB'])}"
                for _ in range(r.randint(2, 7))
            )
            return f"CREATE TABLE IF NOT EXISTS {t} (\n    id SERIAL PRIMARY KEY,\n{cols}\n);\n"
        if k == 1:
            return (
                f"SELECT u.{ident(r)}, COUNT(*) AS n, SUM(o.{ident(r)}) AS total\n"
                f"FROM {t} AS u\nLEFT JOIN {ident(r)} o ON o.user_id = u.id\n"
                f"WHERE u.created_at >= '2024-0{r.randint(1, 9)}-1{r.randint(0, 9)}' AND u.name ILIKE '%{r.choice(SQL_LIKE)}%'\n"
                f"GROUP BY 1\nHAVING COUNT(*) > {r.randint(1, 100)}\nORDER BY total DESC NULLS LAST\nLIMIT {r.randint(1, 1000)};\n"
            )
        if k == 2:
            return f"INSERT INTO {t} (a, b, c) VALUES ({r.randint(0, 999)}, 'it''s {r.choice(['fine', 'ok', 'déjà vu'])}', NULL), (-{r.randint(1, 99)}, E'\\\\n', {r.random():.6f});\n"
        return f"-- {ident(r).replace('_', ' ')}\nUPDATE {t} SET {ident(r)} = {ident(r)} + 1 WHERE id IN (SELECT id FROM {ident(r)} WHERE flag IS TRUE);\n"
    return fill(rng, item, target, "\n")


def gen_shell(rng: random.Random, target: int) -> str:
    def item(r: random.Random) -> str:
        k = r.randrange(4)
        v = ident(r, "upper")
        if k == 0:
            return (
                f"if [ -z \"${{{v}:-}}\" ]; then\n"
                f"    echo \"error: {v} is not set\" >&2\n"
                f"    exit {r.randint(1, 127)}\nfi\n"
            )
        if k == 1:
            return (
                f"for f in ./{ident(r, 'kebab')}/*.{r.choice(['rs', 'py', 'log', 'json'])}; do\n"
                f"\t[[ -f \"$f\" ]] || continue\n"
                f"\tgrep -nE '^(fn|def) [a-z_]+' \"$f\" | awk -F: '{{print $1\":\"$2}}' | sort -u >> /tmp/out.$$\n"
                f"done\n"
            )
        if k == 2:
            return f"{v}=$(curl -fsS -H 'Content-Type: application/json' -d '{{\"n\":{r.randint(0, 99)}}}' http://127.0.0.1:{r.randint(1024, 65535)}/v1/x | jq -r '.{ident(r)} // empty') || true\n"
        return f"cargo test --release -p {ident(r, 'kebab')} -- --nocapture 2>&1 | tee \"log-$(date +%Y%m%d-%H%M%S).txt\"  # {r.randint(0, 9999)}\n"
    return "#!/usr/bin/env bash\nset -euo pipefail\nIFS=$'\\n\\t'\n\n" + fill(rng, item, target, "\n")


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------

JSON_STRINGS = [
    "plain", "with \"quotes\" inside", "back\\slash", "tab\there", "new\nline", "caf\u00e9", "\u65e5\u672c\u8a9e", "\U0001f600 emoji",
    "\u0000nul", "\u001b[31mred\u001b[0m", "</script>", "\u2028line sep\u2029", "slash / and \\/", "", "  spaces  ",
    "\u00e9\u0301", "\ud7ff\ue000\ufffd", "'single'", "{\"nested\": \"json in a string\"}",
]


def json_value(rng: random.Random, depth: int):
    k = rng.randrange(9 if depth < 5 else 6)
    if k == 0:
        return rng.randint(-10**12, 10**12)
    if k == 1:
        return round(rng.uniform(-1e6, 1e6), rng.randint(0, 8))
    if k == 2:
        return rng.choice([True, False, None])
    if k in (3, 4, 5):
        s = rng.choice(JSON_STRINGS)
        if rng.random() < 0.5:
            s = s + " " + ident(rng)
        return s
    if k in (6, 7):
        return {ident(rng, rng.choice(["snake", "camel"])): json_value(rng, depth + 1) for _ in range(rng.randint(1, 6))}
    return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 6))]


def gen_json(rng: random.Random, target: int) -> str:
    def piece(r: random.Random) -> str:
        v = {"id": r.randint(1, 10**9), "kind": ident(r, "kebab"), "data": json_value(r, 0)}
        mode = r.randrange(4)
        if mode == 0:
            return json.dumps(v, ensure_ascii=True, indent=2)
        if mode == 1:
            return json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        if mode == 2:
            return json.dumps(v, ensure_ascii=True)
        return json.dumps(v, ensure_ascii=False, indent="\t")
    sep = "\n" if rng.random() < 0.5 else ",\n"
    return fill(rng, piece, target, sep)


# ---------------------------------------------------------------------------
# Emoji
# ---------------------------------------------------------------------------

ZWJ = "\u200d"
VS16 = "\ufe0f"
SKIN = ["\U0001f3fb", "\U0001f3fc", "\U0001f3fd", "\U0001f3fe", "\U0001f3ff"]
EMOJI_BASIC = list("😀😂🥲😍🤔🙄😴🤯🥳😎🤖👻💩🔥✨🎉💯🚀🌍🍕🍣☕🐍🦀🐈🐕🌈⭐❤💔✅❌⚠♻")
PEOPLE = ["\U0001f468", "\U0001f469", "\U0001f467", "\U0001f466", "\U0001f9d1"]
HANDS = ["\U0001f44d", "\U0001f44b", "\u270c", "\U0001f91e", "\U0001f64f", "\U0001f4aa"]
REGIONAL = [chr(0x1F1E6 + i) for i in range(26)]
FLAG_CODES = "US GB FR DE JP CN KR IN BR RU UA TR VN SA IL GR ES PT MX CA AU NZ ZA NG EG".split()


def flag(code: str) -> str:
    return "".join(REGIONAL[ord(c) - ord("A")] for c in code)


def subdivision_flag(tag: str) -> str:
    return "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in tag) + "\U000e007f"


def emoji_piece(rng: random.Random) -> str:
    k = rng.randrange(9)
    if k == 0:
        return "".join(rng.choice(EMOJI_BASIC) for _ in range(rng.randint(1, 6)))
    if k == 1:  # families
        members = [rng.choice(PEOPLE) for _ in range(rng.randint(2, 4))]
        return ZWJ.join(members)
    if k == 2:  # skin tones
        return rng.choice(HANDS) + rng.choice(SKIN) + (VS16 if rng.random() < 0.3 else "")
    if k == 3:
        return flag(rng.choice(FLAG_CODES)) + (flag(rng.choice(FLAG_CODES)) if rng.random() < 0.5 else "")
    if k == 4:
        return subdivision_flag(rng.choice(["gbeng", "gbsct", "gbwls"]))
    if k == 5:  # keycaps
        return rng.choice("0123456789#*") + VS16 + "\u20e3"
    if k == 6:  # professions / gendered ZWJ with skin tone
        return rng.choice(PEOPLE) + rng.choice(SKIN) + ZWJ + rng.choice(["\U0001f4bb", "\U0001f52c", "\U0001f680", "\u2695" + VS16, "\U0001f373"])
    if k == 7:  # couple with heart
        return "\U0001f469" + rng.choice(SKIN) + ZWJ + "\u2764" + VS16 + ZWJ + "\U0001f48b" + ZWJ + "\U0001f468" + rng.choice(SKIN)
    return rng.choice(["\u2764\ufe0f", "\u263a\ufe0e", "\U0001f3f3\ufe0f\u200d\U0001f308", "\U0001f3f4\u200d\u2620\ufe0f", "\U0001f441\ufe0f\u200d\U0001f5e8\ufe0f", "\u00a9\ufe0f", "\u2122"])


def gen_emoji(rng: random.Random, target: int) -> str:
    words = "ok lol wow nice yes no great thanks party launch coffee love".split()

    def piece(r: random.Random) -> str:
        m = r.randrange(4)
        if m == 0:
            return emoji_piece(r)
        if m == 1:
            return r.choice(words) + emoji_piece(r)
        if m == 2:
            return emoji_piece(r) + " " + r.choice(words) + r.choice(["!", "!!", "?", ".", ""])
        return "".join(emoji_piece(r) for _ in range(r.randint(2, 8)))
    return fill(rng, lambda r: piece(r) + r.choice([" ", " ", "", "\n", "  "]), target)


# ---------------------------------------------------------------------------
# Whitespace
# ---------------------------------------------------------------------------

UNI_SPACES = ["\u00a0", "\u2002", "\u2003", "\u2009", "\u200a", "\u202f", "\u205f", "\u3000", "\u1680", "\u0085", "\u2028", "\u2029", "\u000b", "\u000c"]


def gen_whitespace(rng: random.Random, target: int, only_ws: bool) -> str:
    def run(r: random.Random) -> str:
        k = r.randrange(9)
        n = r.choice([1, 2, 3, 4, 7, 8, 15, 16, 31, 64, 100, r.randint(1, 300)])
        if k == 0:
            return " " * n
        if k == 1:
            return "\t" * max(1, n // 4)
        if k == 2:
            return "".join(r.choice(" \t") for _ in range(n))
        if k == 3:
            return "\n" * max(1, n // 8)
        if k == 4:
            return " " * r.randint(1, 9) + "\n"  # trailing spaces
        if k == 5:
            return "".join(r.choice([" ", "\t", "\n", " \n", "\t\n", "\n "]) for _ in range(max(1, n // 3)))
        if k == 6:
            return "".join(r.choice(UNI_SPACES + [" "]) for _ in range(r.randint(1, 8)))
        if k == 7:
            return "\n" + " " * r.randint(1, 40)  # indentation
        return " " * n + "\n" * r.randint(1, 3) + "\t" * r.randint(0, 3)

    def piece(r: random.Random) -> str:
        if only_ws:
            return run(r)
        word = r.choice(["word", "x", "Hello", "42", "é", "日本", "!", "--", "a.b", "'s", "foo()", "#"])
        return run(r) + word
    text = fill(rng, piece, target)
    # make sure the document ends with whitespace (exercises the \s++$ branch)
    return text + rng.choice(["   ", "\n", " \n \n  ", "\t\t", "\n\n\n", "  \u3000"])


# ---------------------------------------------------------------------------
# Digits and numbers
# ---------------------------------------------------------------------------

def number_piece(rng: random.Random) -> str:
    k = rng.randrange(14)
    if k == 0:
        return "".join(rng.choice(string.digits) for _ in range(rng.randint(4, 400)))
    if k == 1:
        return f"{rng.randint(0, 10**12):,}"
    if k == 2:
        return f"{rng.uniform(-10**6, 10**6):,.{rng.randint(0, 6)}f}"
    if k == 3:
        return f"{rng.randint(0, 10**9):_}"
    if k == 4:  # European style
        return f"{rng.randint(0, 10**9):,}".replace(",", ".") + "," + f"{rng.randint(0, 99):02d}"
    if k == 5:  # thin/nbsp separators
        return f"{rng.randint(0, 10**9):,}".replace(",", rng.choice(["\u202f", "\u00a0", " ", "'"]))
    if k == 6:
        return rng.choice(["+1 (555) 010-", "+44 20 7946 ", "+49 30 "]) + f"{rng.randint(0, 9999):04d}"
    if k == 7:
        return ".".join(str(rng.randint(0, 255)) for _ in range(4)) + ":" + str(rng.randint(1, 65535))
    if k == 8:
        return f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}Z"
    if k == 9:
        return f"{rng.uniform(-1, 1):.3e}" + rng.choice(["", "f64", "f32", "%", "px", "km/h", "€", "$"])
    if k == 10:
        return "0x" + "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(rng.randint(1, 64)))
    if k == 11:  # non-ASCII digits (all \p{N})
        digits = rng.choice(["٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "۰۱۲۳۴۵۶۷۸۹", "๐๑๒๓๔๕๖๗๘๙", "⁰¹²³⁴⁵⁶⁷⁸⁹", "₀₁₂₃₄₅₆₇₈₉", "ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ", "①②③④⑤⑥⑦⑧⑨⑩", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "½¼¾⅓⅔"])
        return "".join(rng.choice(digits) for _ in range(rng.randint(1, 30)))
    if k == 12:  # letters and digits glued
        return rng.choice(["abc", "v", "x", "ID", "é", "日"]) + str(rng.randint(0, 10**8)) + rng.choice(["", "th", "px", "abc", "ß"])
    return "-" + str(rng.randint(0, 10**15)) + rng.choice(["", ".0", ".5", "e-7"])


def gen_digits(rng: random.Random, target: int) -> str:
    return fill(rng, lambda r: number_piece(r) + r.choice([" ", " ", ", ", "\n", "; ", "\t", ""]), target)


# ---------------------------------------------------------------------------
# Line endings
# ---------------------------------------------------------------------------

def gen_line_endings(rng: random.Random, target: int, mode: str) -> str:
    langs = ["en", "fr", "de", "ru"]

    def line(r: random.Random) -> str:
        k = r.randrange(5)
        if k == 0:
            return prose_sentence(r, r.choice(langs))
        if k == 1:
            return " " * r.randint(0, 8) + ident(r) + " = " + str(r.randint(0, 999)) + ";" + " " * r.randint(0, 3)
        if k == 2:
            return r.choice(["", " ", "\t", "  "])
        if k == 3:
            return r.choice(["---", "###", "...", "!!!", "}", "{", ")"])
        return number_piece(r)

    def eol(r: random.Random) -> str:
        if mode == "crlf":
            return r.choice(["\r\n", "\r\n", "\r\n", "\r\n\r\n", " \r\n", "\t\r\n"])
        if mode == "cr":
            return r.choice(["\r", "\r", "\r\r", " \r"])
        return r.choice(["\r\n", "\n", "\r", "\n\r", "\r\r\n", "\r\n\n", " \r\n ", "\r \n", "\u2028", "\u0085", "\r\n\r\n\r\n"])
    return fill(rng, lambda r: line(r) + eol(r), target)


# ---------------------------------------------------------------------------
# Contractions
# ---------------------------------------------------------------------------

CONTR_WORDS = "it he she that what there who John Mary we they you I let ca won do does did would could should must is are was".split()
SUFFIXES = ["s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "VE", "M", "LL", "D", "Re", "rE", "Ve", "vE", "Ll", "lL", "ſ"]
APOS = ["'", "'", "'", "\u2019", "\u2018", "`", "\u02bc", "\uff07"]


def gen_contractions(rng: random.Random, target: int) -> str:
    def piece(r: random.Random) -> str:
        k = r.randrange(7)
        w = r.choice(CONTR_WORDS)
        if r.random() < 0.3:
            w = w.upper()
        suf = r.choice(SUFFIXES)
        ap = r.choice(APOS)
        if k == 0:
            return w + ap + suf
        if k == 1:
            return ap + suf  # bare contraction, preceded by a space
        if k == 2:
            return w + ap + suf + ap + r.choice(SUFFIXES)  # double
        if k == 3:
            return r.choice(["I'm", "you're", "we've", "they'll", "she'd", "it's", "isn't", "DON'T", "Y'ALL'D'VE", "o'clock", "rock'n'roll", "'tis", "'twas", "ma'am", "O'Reilly's"])
        if k == 4:
            return r.choice(["'", "''", "'''", "' s", "'\n", "'1", "'é", "'日本", "'s's's", "''ll"]) + r.choice(SUFFIXES)
        if k == 5:
            return prose_sentence(r, "en")
        return w + ap + r.choice(["sa", "tt", "red", "vex", "mm", "lll", "dd", "sé", "t2", "ve!"])
    return fill(rng, lambda r: piece(r) + r.choice([" ", " ", "  ", "\n", ", ", ". "]), target)


# ---------------------------------------------------------------------------
# Random Unicode (only long-assigned, stable ranges; never surrogates)
# ---------------------------------------------------------------------------

UNICODE_RANGES = [
    (0x0021, 0x007E), (0x00A1, 0x00FF), (0x0100, 0x017F), (0x0180, 0x024F), (0x0250, 0x02AF),
    (0x02B0, 0x02FF), (0x0300, 0x036F), (0x0391, 0x03A1), (0x03A3, 0x03C9), (0x0400, 0x04FF),
    (0x0531, 0x0556), (0x0561, 0x0586), (0x05D0, 0x05EA), (0x0591, 0x05C7), (0x0621, 0x063A),
    (0x0641, 0x0652), (0x0660, 0x0669), (0x0905, 0x0939), (0x093E, 0x094D), (0x0966, 0x096F),
    (0x0985, 0x098C), (0x0E01, 0x0E3A), (0x0E40, 0x0E4E), (0x10D0, 0x10FA), (0x1100, 0x1112),
    (0x1161, 0x1175), (0x1E00, 0x1EFF), (0x2010, 0x2027), (0x2030, 0x205E), (0x20A0, 0x20B5),
    (0x2100, 0x214F), (0x2150, 0x2182), (0x2190, 0x21FF), (0x2200, 0x22FF), (0x2300, 0x23CE),
    (0x2460, 0x24FF), (0x2500, 0x257F), (0x2580, 0x259F), (0x25A0, 0x25FF), (0x2600, 0x26FF),
    (0x2701, 0x27BF), (0x2800, 0x28FF), (0x3001, 0x303F), (0x3041, 0x3096), (0x30A1, 0x30FA),
    (0x3105, 0x312C), (0x4E00, 0x9FA5), (0xA000, 0xA48C), (0xAC00, 0xD7A3), (0xE000, 0xF8FF),
    (0xFB1D, 0xFB36), (0xFE20, 0xFE23), (0xFF01, 0xFF5E), (0xFF61, 0xFF9F), (0x10300, 0x1031E),
    (0x1D400, 0x1D454), (0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x20000, 0x2A6D6), (0xF0000, 0xF00FF),
]
COMBINING = [chr(c) for c in range(0x0300, 0x0370)] + ["\u0483", "\u0591", "\u064b", "\u0670", "\u093c", "\u20d0", "\u20e3", "\ufe20", "\u302a", "\u3099"]
SPECIAL_CHARS = [
    "\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
    "\u2066", "\u2067", "\u2068", "\u2069", "\u2060", "\ufeff", "\u00ad", "\u034f", "\u061c", "\u180e",
    "\ufffc", "\ufffd", "\ufffe", "\uffff", "\U0010ffff", "\U000e0001", "\U000e0020", "\u0001", "\u001f",
    "\u007f", "\u0080", "\u009f", "\u0000",
]


def random_cp(rng: random.Random) -> str:
    lo, hi = rng.choice(UNICODE_RANGES)
    return chr(rng.randint(lo, hi))


def gen_unicode(rng: random.Random, target: int) -> str:
    def piece(r: random.Random) -> str:
        k = r.randrange(7)
        if k in (0, 1):
            return "".join(random_cp(r) for _ in range(r.randint(1, 12)))
        if k == 2:  # letter + stacked combining marks ("zalgo")
            base = r.choice("aeiouAZxyzßøŋ日ㅎ")
            return base + "".join(r.choice(COMBINING) for _ in range(r.randint(1, 12)))
        if k == 3:  # zero-width / bidi / format / noncharacters
            return "".join(r.choice(SPECIAL_CHARS + [random_cp(r)]) for _ in range(r.randint(1, 6)))
        if k == 4:  # RTL run with embedded LTR and digits
            return "\u202b" + "".join(chr(r.randint(0x05D0, 0x05EA)) for _ in range(r.randint(2, 8))) + " abc " + str(r.randint(0, 999)) + " " + "".join(chr(r.randint(0x0621, 0x063A)) for _ in range(r.randint(2, 8))) + "\u202c"
        if k == 5:  # one block, longer run
            lo, hi = r.choice(UNICODE_RANGES)
            return "".join(chr(r.randint(lo, hi)) for _ in range(r.randint(5, 40)))
        return r.choice(UNI_SPACES) + random_cp(r)
    return fill(rng, lambda r: piece(r) + r.choice([" ", "", "", "\n", "\t"]), target)


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------

def gen_markdown(rng: random.Random, target: int) -> str:
    def block(r: random.Random) -> str:
        k = r.randrange(7)
        if k == 0:
            return "#" * r.randint(1, 6) + " " + prose_sentence(r, r.choice(["en", "de", "fr"])).rstrip(".")
        if k == 1:
            cols = r.randint(2, 6)
            head = "| " + " | ".join(ident(r).replace("_", " ").title() for _ in range(cols)) + " |"
            sep = "|" + "|".join(r.choice(["---", ":---", "---:", ":---:", "-----------"]) for _ in range(cols)) + "|"
            rows = [
                "| " + " | ".join(r.choice([str(r.randint(0, 10**6)), f"{r.random():.3f}", "`" + ident(r) + "`", "**bold**", "_it_", "✅", "❌", "n/a", "日本語", ""]) for _ in range(cols)) + " |"
                for _ in range(r.randint(2, 12))
            ]
            return "\n".join([head, sep] + rows)
        if k == 2:
            return "\n".join(r.choice(["- ", "* ", "+ ", "1. ", "  - ", "    1) ", "- [ ] ", "- [x] "]) + prose_sentence(r, "en") for _ in range(r.randint(2, 8)))
        if k == 3:
            lang = r.choice(["rust", "python", "js", "sql", "bash", ""])
            body = {"rust": gen_rust, "python": gen_python, "js": gen_js, "sql": gen_sql, "bash": gen_shell, "": gen_shell}[lang](r, r.randint(100, 600))
            return "```" + lang + "\n" + body.rstrip("\n") + "\n```"
        if k == 4:
            return "> " + prose_sentence(r, "en") + "\n> \n> \u2014 *" + r.choice(LANGS["en"]["Q"]) + "*"
        if k == 5:
            return f"See [{ident(r).replace('_', ' ')}](https://example.com/{ident(r, 'kebab')}?q={r.randint(0, 99)}&lang=en#sec-{r.randint(1, 9)}) and ![img](./img/{ident(r)}.png \"title\"). Inline `code_{r.randint(0, 9)}()`, ~~strike~~, <kbd>Ctrl</kbd>+<kbd>C</kbd>, footnote[^{r.randint(1, 9)}]."
        return prose_sentence(r, "en") + "  \n" + prose_sentence(r, "en") + "\n\n---"
    return fill(rng, block, target, "\n\n") + "\n"


# ---------------------------------------------------------------------------
# Chat-like text
# ---------------------------------------------------------------------------

def gen_chat(rng: random.Random, target: int) -> str:
    users = ["user", "assistant", "system", "User", "Assistant", "bob_42", "\u30e6\u30fc\u30b6\u30fc"]

    def turn(r: random.Random) -> str:
        who = r.choice(users)
        k = r.randrange(7)
        if k == 0:
            msg = "hey can u help me w/ " + ident(r).replace("_", " ") + "??" + r.choice(["", " pls", " \U0001f64f", " thx!!"])
        elif k == 1:
            msg = prose_sentence(r, r.choice(list(LANGS)))
        elif k == 2:
            msg = "Sure! Here's an example:\n\n```python\n" + gen_python(r, 200).strip() + "\n```\n\nLet me know if that doesn't work."
        elif k == 3:
            msg = r.choice(["lol", "ok", "k", "thanks!", "wait what", "no :(", "yes :)", "hmm...", ":D", "^_^", "¯\\_(ツ)_/¯", "idk tbh", "brb"]) + emoji_piece(r)
        elif k == 4:
            msg = "I'm not sure, but I'd say it's " + str(r.randint(0, 100)) + "% likely. You'll want to double-check; we've seen cases where it didn't."
        elif k == 5:
            msg = json.dumps({"role": who, "content": prose_sentence(r, "en"), "tool_calls": [{"id": f"call_{r.randint(0, 10**8)}", "function": {"name": ident(r), "arguments": json.dumps({"q": ident(r)})}}]})
        else:
            msg = r.choice(["<|im_start|>", "<|im_end|>", "[INST]", "[/INST]", "<s>", "</s>", "### Human:", "### Assistant:"]) + " " + prose_sentence(r, "en")
        sep = r.choice([": ", ":\n", " > ", "\t"])
        return f"[{r.randint(0, 23):02d}:{r.randint(0, 59):02d}] {who}{sep}{msg}"
    return fill(rng, turn, target, rng.choice(["\n", "\n\n", "\r\n"]))


# ---------------------------------------------------------------------------
# Adversarial
# ---------------------------------------------------------------------------

SPECIAL_LIKE = [
    "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>", "<|im_start|>", "<|im_end|>",
    "<|startoftext|>", "<|return|>", "<|channel|>", "<|message|>", "<|end|>", "<|", "|>", "<||>", "<|endoftext", "endoftext|>",
    "<| endoftext |>", "<|ENDOFTEXT|>", "<<|endoftext|>>", "<|endoftext|><|endoftext|>", "\\<|endoftext|\\>",
]


def gen_adversarial(rng: random.Random, target: int, variant: int) -> str:
    if variant == 0:  # very long single words
        def piece(r: random.Random) -> str:
            k = r.randrange(6)
            n = r.randint(200, 3000)
            if k == 0:
                return "a" * n
            if k == 1:
                return "".join(r.choice(string.ascii_letters) for _ in range(n))
            if k == 2:
                return "".join(r.choice(string.ascii_letters + string.digits + "+/") for _ in range(n)) + "=="
            if k == 3:
                return "".join(r.choice("0123456789abcdef") for _ in range(n))
            if k == 4:
                return "https://example.com/" + "/".join(ident(r, "kebab") for _ in range(n // 20)) + "?x=" + "%" .join(f"{r.randint(0, 255):02X}" for _ in range(40))
            return "".join(r.choice("абвгдеёжзийклмнопрстуфхцчшщъыьэюя") for _ in range(n // 2))
        return fill(rng, piece, target, rng.choice([" ", "\n"]))
    if variant == 1:  # repeated punctuation
        def piece(r: random.Random) -> str:
            p = r.choice(["!", "?", ".", ",", "-", "=", "*", "#", "~", "_", "/", "\\", "|", "…", "—", "。", "!?", "?!", "...", "()", "[]", "{}", "<>", "''", '""', "'", "''s"])
            return p * r.randint(1, 400)
        return fill(rng, lambda r: piece(r) + r.choice(["", " ", "\n", "a", "1"]), target)
    if variant == 2:  # special-token-like strings as ordinary text
        def piece(r: random.Random) -> str:
            s = r.choice(SPECIAL_LIKE)
            k = r.randrange(4)
            if k == 0:
                return s
            if k == 1:
                return prose_sentence(r, "en") + s
            if k == 2:
                return s * r.randint(2, 10)
            return r.choice([" ", "\n", "x", "'s", "1"]) + s + r.choice([" ", "\n", "y", "!", ""])
        return fill(rng, lambda r: piece(r) + r.choice(["", " ", "\n"]), target)
    if variant == 3:  # long runs of a single non-ASCII char / emoji / mixed scripts
        def piece(r: random.Random) -> str:
            k = r.randrange(5)
            if k == 0:
                return r.choice(["日", "の", "한", "é", "ß", "ж", "ا"]) * r.randint(50, 1500)
            if k == 1:
                return r.choice(["\U0001f600", "\U0001f44d\U0001f3fd", "\U0001f1fa\U0001f1f8", "\u200d", "\ufe0f"]) * r.randint(20, 400)
            if k == 2:
                return "".join(r.choice(["a", "ж", "日", "1", "é", "ا", "α", "_", "'", "s"]) for _ in range(r.randint(50, 800)))
            if k == 3:
                return " " * r.randint(1, 5) + "\u0301" * r.randint(1, 300)  # combining marks with no base
            return ("a" + " " * r.randint(1, 3)) * r.randint(10, 500)
        return fill(rng, lambda r: piece(r) + r.choice(["", " ", "\n"]), target)
    # variant 4: a mix of everything glued without separators
    gens = [lambda r, t: gen_prose(r, r.choice(list(LANGS)), t), gen_zh, gen_emoji, gen_digits, gen_contractions, gen_unicode, gen_json]

    def piece(r: random.Random) -> str:
        return r.choice(gens)(r, r.randint(20, 400))[: r.randint(10, 300)]
    return fill(rng, piece, target)


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

# (category, number of documents, generator(rng, target_bytes, index))
CATEGORIES = [(f"prose_{lang}", 4, (lambda lang: lambda r, t, i: gen_prose(r, lang, t))(lang)) for lang in LANGS] + [
    ("cjk_zh", 5, lambda r, t, i: gen_zh(r, t)),
    ("cjk_ja", 5, lambda r, t, i: gen_ja(r, t)),
    ("cjk_ko", 5, lambda r, t, i: gen_ko(r, t)),
    ("code_rust", 5, lambda r, t, i: gen_rust(r, t)),
    ("code_python", 5, lambda r, t, i: gen_python(r, t)),
    ("code_js", 4, lambda r, t, i: gen_js(r, t)),
    ("code_sql", 4, lambda r, t, i: gen_sql(r, t)),
    ("code_shell", 4, lambda r, t, i: gen_shell(r, t)),
    ("json", 6, lambda r, t, i: gen_json(r, t)),
    ("emoji", 6, lambda r, t, i: gen_emoji(r, t)),
    ("whitespace", 6, lambda r, t, i: gen_whitespace(r, t, only_ws=(i % 3 == 0))),
    ("digits", 6, lambda r, t, i: gen_digits(r, t)),
    ("line_endings", 6, lambda r, t, i: gen_line_endings(r, t, ["crlf", "cr", "mixed"][i % 3])),
    ("contractions", 6, lambda r, t, i: gen_contractions(r, t)),
    ("unicode_random", 8, lambda r, t, i: gen_unicode(r, t)),
    ("markdown", 5, lambda r, t, i: gen_markdown(r, t)),
    ("chat", 5, lambda r, t, i: gen_chat(r, t)),
    ("adversarial", 10, lambda r, t, i: gen_adversarial(r, t, i % 5)),
]


def build() -> list[dict]:
    docs = []
    for cat, count, gen in CATEGORIES:
        for i in range(count):
            # one independent, stable stream per document
            seed = int.from_bytes(hashlib.sha256(f"{SEED}/{cat}/{i}".encode()).digest()[:8], "big")
            rng = random.Random(seed)
            target = rng.choice([rng.randint(MIN_DOC, 4096), rng.randint(4096, 12000), rng.randint(12000, 18500)])
            text = clamp(gen(rng, target, i))
            for ch in text:
                assert not (0xD800 <= ord(ch) <= 0xDFFF), (cat, i)
            n = utf8_len(text)
            assert MIN_DOC <= n <= MAX_DOC, (cat, i, n)
            docs.append({"id": f"{cat}-{i}", "text": text})
    return docs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    docs = build()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    lines = [json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n" for d in docs]
    payload = "".join(lines).encode("utf-8")
    with open(args.out, "wb") as f:
        f.write(payload)
    text_bytes = sum(utf8_len(d["text"]) for d in docs)
    per_cat: dict[str, list[int]] = {}
    for d in docs:
        cat = d["id"].rsplit("-", 1)[0]
        per_cat.setdefault(cat, [0, 0])
        per_cat[cat][0] += 1
        per_cat[cat][1] += utf8_len(d["text"])
    for cat, (n, b) in per_cat.items():
        print(f"  {cat:16s} {n:3d} docs {b:9,d} bytes")
    print(f"documents: {len(docs)}  categories: {len(per_cat)}")
    print(f"text: {text_bytes:,} bytes of UTF-8  file: {len(payload):,} bytes  sha256: {hashlib.sha256(payload).hexdigest()}")
    print(f"wrote {args.out}")
    if text_bytes < MIN_TOTAL:
        print(f"error: corpus text is {text_bytes} bytes, below {MIN_TOTAL}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
